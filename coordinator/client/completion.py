"""`suanli completion bash|zsh`: a shell completion script, written from the parser itself.

Hand-written rather than taken from a library (shtab, argcomplete): the command tree is small
and static, so a generated table of commands and flags needs no new dependency, and no Python
runs on each Tab press. Load it with `source <(suanli completion bash)` (or zsh, after
`compinit`).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

SHELLS = ("bash", "zsh")


@dataclass
class Node:
    """One command: its subcommands and flags, with the help shown beside them in zsh."""

    commands: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    takes_value: list[str] = field(default_factory=list)
    takes_file: list[str] = field(default_factory=list)
    choices: dict[str, str] = field(default_factory=dict)


def _help(text: str | None) -> str:
    first = (text or "").split("; ")[0].split(" (")[0]
    return first if len(first) <= 70 else first[:69] + "…"


def tree(parser: argparse.ArgumentParser, at: str = "") -> Iterator[tuple[str, Node]]:
    """Each command's path ("", "/job", "/job/submit") and what may follow it."""
    node = Node()
    children: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                node.commands[name] = _help(helps.get(name))
                children.append((name, child))
        elif action.option_strings:
            if action.help == argparse.SUPPRESS:
                continue
            for option in action.option_strings:
                node.options[option] = _help(action.help)
                if action.nargs != 0:
                    node.takes_value.append(option)
                    named = f"{action.metavar or ''} {action.dest}".lower()
                    if "file" in named or "path" in named:
                        node.takes_file.append(option)
        elif action.choices:
            node.choices.update({str(choice): _help(action.help) for choice in action.choices})
    yield at, node
    for name, child in children:
        yield from tree(child, f"{at}/{name}")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _case(function: str, rows: dict[str, str]) -> str:
    body = "".join(f"        {_quote(at)}) {value} ;;\n" for at, value in rows.items() if value)
    return f'{function}() {{\n    case "$1" in\n{body}    esac\n}}\n'


def _words(items: Any) -> str:
    words = " ".join(items)
    return f"echo {_quote(words)}" if words else ""


_WALK = """\
    local at="" skip="" word i
    for ((i = {first}; i < {last}; i++)); do
        word="${{{words}[i]}}"
        if [[ -n $skip ]]; then skip=""; continue; fi
        if [[ $word == -- ]]; then {after_dashes}; return 0; fi
        if [[ $word == -* ]]; then
            [[ $word != *=* && " $(_suanli_values "$at") " == *" $word "* ]] && skip=1
            continue
        fi
        [[ " $(_suanli_commands "$at") " == *" $word "* ]] && at="$at/$word"
    done
"""


def bash_script(parser: argparse.ArgumentParser) -> str:
    nodes = dict(tree(parser))
    tables = _tables(nodes)
    walk = _WALK.format(
        first=1, last="COMP_CWORD", words="COMP_WORDS", after_dashes="compopt -o default"
    )
    return f"""\
# bash completion for suanli: source <(suanli completion bash)
{tables}
_suanli() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
{walk}    if [[ -n $skip ]]; then
        if [[ " $(_suanli_files "$at") " == *" $prev "* ]]; then
            compopt -o filenames
            COMPREPLY=($(compgen -f -- "$cur"))
        fi
        return 0
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$(_suanli_options "$at")" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$(_suanli_commands "$at") $(_suanli_choices "$at")" -- "$cur"))
    fi
}}
complete -F _suanli suanli
"""


def _tables(nodes: dict[str, Node]) -> str:
    return "".join(
        [
            _case("_suanli_commands", {at: _words(n.commands) for at, n in nodes.items()}),
            _case("_suanli_choices", {at: _words(n.choices) for at, n in nodes.items()}),
            _case("_suanli_options", {at: _words(n.options) for at, n in nodes.items()}),
            _case("_suanli_values", {at: _words(n.takes_value) for at, n in nodes.items()}),
            _case("_suanli_files", {at: _words(n.takes_file) for at, n in nodes.items()}),
        ]
    )


def _described(items: dict[str, str]) -> str:
    pairs = " ".join(_quote(name.replace(":", r"\:") + ":" + text) for name, text in items.items())
    return f"reply=({pairs})" if pairs else ""


def zsh_script(parser: argparse.ArgumentParser) -> str:
    nodes = dict(tree(parser))
    described = "".join(
        [
            _case(
                "_suanli_command_items",
                {at: _described({**n.commands, **n.choices}) for at, n in nodes.items()},
            ),
            _case("_suanli_option_items", {at: _described(n.options) for at, n in nodes.items()}),
        ]
    )
    walk = _WALK.format(first=2, last="CURRENT", words="words", after_dashes="_files")
    return f"""\
#compdef suanli
# zsh completion for suanli: source <(suanli completion zsh), after compinit
{_tables(nodes)}{described}
_suanli() {{
    local -a reply
{walk}    if [[ -n $skip ]]; then
        if [[ " $(_suanli_files "$at") " == *" ${{words[CURRENT-1]}} "* ]]; then _files; fi
        return 0
    fi
    if [[ ${{words[CURRENT]}} == -* ]]; then
        _suanli_option_items "$at"
        _describe -t options option reply
    else
        _suanli_command_items "$at"
        _describe -t commands command reply
    fi
}}
compdef _suanli suanli
"""


def cmd_completion(args: argparse.Namespace) -> int:
    parser = args.completion_root
    print(bash_script(parser) if args.shell == "bash" else zsh_script(parser), end="")
    return 0


def add_completion(commands: Any, root: argparse.ArgumentParser) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "completion",
        help="print a shell completion script: source <(suanli completion bash)",
        description="Print a completion script for bash or zsh: add "
        "`source <(suanli completion bash)` to ~/.bashrc, or "
        "`source <(suanli completion zsh)` after compinit in ~/.zshrc.",
    )
    parser.add_argument("shell", choices=SHELLS, help="the shell")
    parser.set_defaults(local=cmd_completion, completion_root=root, run=cmd_completion)
