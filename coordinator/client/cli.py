"""`suanli`: the client of the coordinator for enterprises and auditors.

Exit status: 0 done; 1 the coordinator refused or could not be reached; 2 the command
line or its settings are wrong (nothing was sent); 3 `suanli audit` found discrepancies.
`job wait`, `job logs --follow` and `job submit --wait/--follow` exit with the job's exit
code once it has ended (see coordinator.client.follow).
Errors are one sentence on stderr, `suanli: …`; with `--json`, stdout carries JSON only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from coordinator.client import (
    arguments,
    audit,
    completion,
    exec_commands,
    follow,
    job_file,
    job_labels,
    login,
    quote,
    registry_login,
    render,
)
from coordinator.client import submit as submit_command
from coordinator.client.api import CoordinatorApi
from coordinator.client.arguments import UsageError
from coordinator.client.connection import connection_options as _connection_options
from shared.command_line import top_parser
from shared.http_client import CoordinatorError, Refused, TransportError

ENV_COORDINATOR = "SUANLI_COORDINATOR"
ENV_TOKEN = "SUANLI_TOKEN"
ENV_CA_FILE = "SUANLI_CA_FILE"
EXIT_REFUSED = 1
EXIT_USAGE = 2

Command = Callable[[CoordinatorApi, argparse.Namespace], Awaitable[int]]


# -- the parser -----------------------------------------------------------------------


def _leaf(
    commands: Any, name: str, run: Command, help_text: str, description: str | None = None
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=help_text, description=description or help_text
    )
    _connection_options(parser, top=False)
    parser.set_defaults(run=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = top_parser(
        "suanli",
        "Suanli client: post and follow GPU jobs, see the market and your account.",
        parser_class=arguments.Parser,
    )
    _connection_options(parser, top=True)
    parser.set_defaults(run=None, help_parser=parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    job = commands.add_parser(
        "job",
        help="post, list, show, follow and cancel GPU jobs",
        description="Post, list, show, follow and cancel GPU jobs.",
    )
    job.set_defaults(help_parser=job)
    _connection_options(job, top=False)
    actions = job.add_subparsers(dest="action", metavar="ACTION")

    submit = submit_command.add_submit(actions, _leaf)

    listing = _leaf(actions, "list", cmd_list, "list your jobs, newest first")
    listing.add_argument(
        "--state",
        help="only jobs in this state (pending, leased, running, "
        "succeeded, failed, cancelled, lost)",
    )
    listing.add_argument(
        "--limit",
        type=arguments.positive_int,
        metavar="N",
        help="at most N jobs (server default 100)",
    )
    job_labels.add_filters(listing)

    show = _leaf(
        actions, "show", cmd_show, "a job's state, why it waits, its agent, GPUs, price and times"
    )
    show.add_argument("job_id", metavar="ID")

    follow.add_commands(actions, _leaf)
    quote.add_commands(actions, _leaf, submit_command.add_submit)
    exec_commands.add_commands(actions, _leaf)

    cancel = _leaf(actions, "cancel", cmd_cancel, "cancel a job")
    cancel.add_argument("job_id", metavar="ID")

    _leaf(commands, "market", cmd_market, "capacity and asks by GPU model, and the pool in PFLOPS")
    _leaf(commands, "account", cmd_account, "who your token is")
    audit.add_commands(commands, _connection_options)
    login.add_login(commands, _connection_options)
    registry_login.add_commands(commands)
    completion.add_completion(commands, parser)
    job_file.accept_job_file(submit)  # last: every flag of submit gets its key
    return parser


# -- commands ---------------------------------------------------------------------------


async def cmd_list(api: CoordinatorApi, args: argparse.Namespace) -> int:
    answer = await api.list_jobs(
        args.state, args.limit, name=args.name, label=job_labels.selector(args.labels)
    )
    if args.json:
        render.print_json(answer)
    elif not answer.get("jobs"):
        print("no jobs" + (f" in state {args.state}" if args.state else ""))
    else:
        render.jobs_table(answer["jobs"])
    return 0


async def cmd_show(api: CoordinatorApi, args: argparse.Namespace) -> int:
    job = await api.job(args.job_id)
    if args.json:
        render.print_json(job)
    else:
        print(render.job_details(job))
    return 0


async def cmd_cancel(api: CoordinatorApi, args: argparse.Namespace) -> int:
    job = await api.cancel_job(args.job_id)
    if args.json:
        render.print_json(job)
    elif job.get("state") == "cancelled":
        print(f"{job['id']} cancelled")
    elif job.get("cancel_requested") and job.get("state") in ("leased", "running"):
        print(
            f"{job['id']}: cancel requested; it stays {job['state']} until its agent "
            "stops the container"
        )
    else:
        print(f"{job['id']} had already ended ({job.get('state')}); nothing to cancel")
    return 0


async def cmd_market(api: CoordinatorApi, args: argparse.Namespace) -> int:
    summary = await api.market()
    if args.json:
        render.print_json(summary)
    else:
        render.market_table(summary)
    return 0


async def cmd_account(api: CoordinatorApi, args: argparse.Namespace) -> int:
    account = await api.account()
    if args.json:
        render.print_json(account)
    else:
        print(render.account_text(account))
    return 0


# -- running ----------------------------------------------------------------------------


def _setting(args: argparse.Namespace, name: str, env: str) -> str | None:
    value = getattr(args, name, None)
    return value if value else os.environ.get(env) or None


def _api(args: argparse.Namespace) -> CoordinatorApi:
    url = _setting(args, "coordinator", ENV_COORDINATOR)
    if url is None:
        raise UsageError(
            f"no coordinator given; pass --coordinator URL, set {ENV_COORDINATOR} "
            "or run suanli login"
        )
    token = _setting(args, "token", ENV_TOKEN)
    if token is None:
        raise UsageError(f"no token given; pass --token T, set {ENV_TOKEN} or run suanli login")
    return CoordinatorApi(url, token, _setting(args, "ca_file", ENV_CA_FILE))


async def _run(run: Command, api: CoordinatorApi, args: argparse.Namespace) -> int:
    async with api:
        return await run(api, args)


def _fail(message: str, status: int) -> int:
    print(f"suanli: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "local", None) is not None:  # needs no coordinator
            return registry_login.run_local(args)
        if args.run is None:
            args.help_parser.print_help(sys.stderr)
            return EXIT_USAGE
        if getattr(args, "complete", None) is not None:  # the job file
            args.complete(args)
        getattr(args, "prepare", login.use_profile)(args)
    except arguments.CommandLineError as exc:
        return _fail(str(exc), EXIT_USAGE)
    if getattr(args, "audit", None) is not None:  # the log is public: no token
        return audit.main(
            args,
            _setting(args, "coordinator", ENV_COORDINATOR),
            _setting(args, "ca_file", ENV_CA_FILE),
        )
    try:
        api = _api(args)
        return asyncio.run(_run(args.run, api, args))
    except (UsageError, registry_login.RegistryLoginError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except TransportError as exc:
        return _fail(exc.detail, EXIT_USAGE)
    except Refused as exc:
        if getattr(args, "job_file_keys", None) is not None:
            return _fail(job_file.in_flag_words(exc.detail, args.job_file_keys), EXIT_REFUSED)
        return _fail(exc.detail, EXIT_REFUSED)
    except CoordinatorError as exc:
        return _fail(exc.detail, EXIT_REFUSED)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`suanli job logs ID | head`): stop quietly, and point stdout
        # at /dev/null so that the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_REFUSED
