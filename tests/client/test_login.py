"""`suanli login` and its profiles against a real coordinator, in a temporary HOME: the file
and directory modes, named profiles, flags and environment over the profile, and a settings
file or profile name an attacker could plant refused in one clear sentence."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from coordinator_harness import CoordinatorProcess
from hypothesis import given, settings
from hypothesis import strategies as st
from suanli_run import ok, refused, suanli

from coordinator.client.profiles import Profile, config_path, read_profiles, save_profile

# each test runs the real `suanli` command
pytestmark = pytest.mark.integration


def _config(home: Path) -> Path:
    return home / ".config" / "suanli" / "config.toml"


def test_login_keeps_the_token_0600_and_later_commands_use_it(
    coordinator: CoordinatorProcess, tmp_path: Path
) -> None:
    first, second = coordinator.add_enterprise(31), coordinator.add_enterprise(32)
    url = coordinator.url
    said = ok(suanli("login", "--coordinator", url, home=tmp_path, stdin=first + "\n")).stdout
    config = _config(tmp_path)
    assert said.startswith(f"logged in to {url} as enterprise ent-")
    assert said.rstrip().endswith(f"saved as profile default in {config}")
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert first in config.read_text()

    mine = ok(suanli("account", "--json", home=tmp_path)).json()["id"]
    # a second profile, its token from the environment; the coordinator from the flag
    ok(
        suanli(
            "login",
            "--coordinator",
            url,
            "--profile",
            "other",
            home=tmp_path,
            env={"SUANLI_TOKEN": second},
        )
    )
    theirs = ok(suanli("--profile", "other", "account", "--json", home=tmp_path)).json()["id"]
    assert theirs != mine
    by_env = suanli("account", "--json", home=tmp_path, env={"SUANLI_PROFILE": "other"})
    assert ok(by_env).json()["id"] == theirs
    assert ok(suanli("account", "--json", home=tmp_path)).json()["id"] == mine  # default kept

    # a flag or the environment beats the profile
    wrong = suanli("account", home=tmp_path, env={"SUANLI_TOKEN": "sk_not_a_token"})
    assert refused(wrong, 1) == "the token is not valid"
    assert refused(suanli("account", "--token", "sk_nope", home=tmp_path), 1) == (
        "the token is not valid"
    )
    # a login again reuses the profile's coordinator; a bad token is not saved
    before = config.read_text()
    bad = suanli("login", home=tmp_path, stdin="sk_not_a_token\n")
    assert refused(bad, 1) == "the token is not valid"
    assert config.read_text() == before
    # the public log needs no token: audit finds the coordinator in the profile too
    audit = suanli("audit", "replay-auctions", "--json", home=tmp_path)
    assert audit.returncode == 0, audit.stderr


def test_a_config_others_can_read_is_refused(
    coordinator: CoordinatorProcess, tmp_path: Path
) -> None:
    token = coordinator.add_enterprise(33)
    ok(suanli("login", "--coordinator", coordinator.url, home=tmp_path, stdin=token))
    config = _config(tmp_path)
    for mode in (0o644, 0o640, 0o602):
        config.chmod(mode)
        line = refused(suanli("account", home=tmp_path))
        assert line == (
            f"refusing to read {config}: it holds tokens and others may read or change it "
            f"(mode {mode:04o}); run chmod 600 {config}"
        )
    config.chmod(0o600)
    # a symlink to a readable file is judged by the file it points to
    planted = tmp_path / "planted.toml"
    planted.write_text(config.read_text())
    planted.chmod(0o644)
    config.unlink()
    config.symlink_to(planted)
    assert refused(suanli("account", home=tmp_path)).startswith(f"refusing to read {config}")
    # everything given by flags or env: the file is not read at all
    env = {"SUANLI_COORDINATOR": coordinator.url, "SUANLI_TOKEN": token}
    assert ok(suanli("account", "--json", home=tmp_path, env=env)).json()["role"] == "enterprise"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_a_config_someone_else_owns_is_refused(tmp_path: Path) -> None:
    save_profile(config_path({"HOME": str(tmp_path)}), "default", Profile("https://a.example", "t"))
    config = _config(tmp_path)
    os.chown(config, 65534, 65534)
    line = refused(suanli("account", home=tmp_path))
    assert line == f"refusing to read {config}: it belongs to user 65534, not to you"


@pytest.mark.parametrize("name", ["../evil", "a/b", "", "-x", ".hidden", "x" * 65, "名字", "a b"])
def test_a_profile_name_with_path_characters_is_refused(tmp_path: Path, name: str) -> None:
    by_flag = suanli(
        "login",
        "--coordinator",
        "http://127.0.0.1:9",
        "--profile=" + name,
        home=tmp_path,
        stdin="t",
    )
    if name:
        assert refused(by_flag).startswith(f"--profile: {name!r} is not a profile name")
        by_env = suanli("account", home=tmp_path, env={"SUANLI_PROFILE": name})
        assert refused(by_env).startswith(f"SUANLI_PROFILE: {name!r} is not a profile name")
    assert not (tmp_path / ".config").exists() and not (tmp_path / "evil").exists()


def test_an_unknown_profile_or_a_tampered_file_is_one_sentence(tmp_path: Path) -> None:
    config = _config(tmp_path)
    line = refused(suanli("--profile", "prod", "account", home=tmp_path))
    assert line == f"no profile 'prod' in {config}; `suanli login --profile prod` makes it"
    config.parent.mkdir(parents=True)
    for text, says in [
        ('[profiles.default]\ntoken = "t"\nshell = "rm -rf /"\n', "unknown key 'shell'"),
        ('[profiles."../x"]\ntoken = "t"\n', "'../x' is not a profile name"),
        ("[profiles.default]\ntoken = 5\n", "profiles.default.token must be a non-empty string"),
        ('coordinator = "https://evil.example"\n', "unknown key 'coordinator'"),
        ("[profiles.default\n", "is not valid TOML"),
    ]:
        config.write_text(text)
        config.chmod(0o600)
        line = refused(suanli("account", home=tmp_path))
        assert line.startswith(str(config)) and says in line, line
    line = refused(suanli("account", home=tmp_path, env={"SUANLI_COORDINATOR": "http://x"}))
    assert "is not valid TOML" in line


def test_a_relative_xdg_config_home_is_ignored() -> None:
    assert config_path({"XDG_CONFIG_HOME": "rel", "HOME": "/h"}) == Path(
        "/h/.config/suanli/config.toml"
    )
    assert config_path({"XDG_CONFIG_HOME": "/x", "HOME": "/h"}) == Path("/x/suanli/config.toml")


TEXT = st.text(min_size=1).filter(str.isprintable)


@settings(max_examples=50)
@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,10}", fullmatch=True),
        st.tuples(TEXT, TEXT | st.text(alphabet='"\\\t\x7f\x00\n', min_size=1)),
        max_size=4,
    )
)
def test_profiles_read_back_exactly_whatever_they_hold(
    tmp_path_factory: pytest.TempPathFactory, entries: dict[str, tuple[str, str]]
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "suanli" / "config.toml"
    for name, (url, token) in entries.items():
        save_profile(path, name, Profile(url, token))
    read = read_profiles(path)
    assert {n: (p.coordinator, p.token) for n, p in read.items()} == entries
