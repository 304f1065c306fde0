"""A private PostgreSQL cluster for tests and benchmarks: Debian's PostgreSQL 15 binaries, a
data directory in a temp dir, a unix socket there and a random loopback port.

initdb refuses to run as root, so as root the cluster belongs to the `postgres` user the
package creates (its files, and the server process, which is our own child so we reap it).

    python tests/postgres_cluster.py DIR     # start one, print its URL, stop on Ctrl-C
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import count
from pathlib import Path

BIN_DIRS = [Path("/usr/lib/postgresql/15/bin"), Path("/usr/lib/postgresql/16/bin")]
START_TIMEOUT_S = 30
# the tests' cluster trades crash safety for speed (its data dies with the run); the
# benchmark's keeps PostgreSQL's defaults apart from asynchronous commit, which matches the
# durability of SQLite's WAL with synchronous=NORMAL (a crash may lose the last commits, never
# corrupt)
TEST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
BENCH_SETTINGS = {"synchronous_commit": "off"}


def bin_dir() -> Path | None:
    """Where Debian's PostgreSQL server binaries are, or None where none is installed."""
    for candidate in BIN_DIRS:
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """One running server; `url(name)` for a database in it, `create_database` for a new one."""

    def __init__(self, directory: Path, settings: dict[str, str] | None = None) -> None:
        binaries = bin_dir()
        if binaries is None:
            raise RuntimeError("PostgreSQL is not installed (Debian package `postgresql`)")
        self.bin = binaries
        self.directory = directory
        self.data = directory / "data"
        self.socket_dir = directory / "socket"
        self.port = _free_port()
        self.settings = dict(TEST_SETTINGS if settings is None else settings)
        self._as_postgres = os.geteuid() == 0
        self._process: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._names = count(1)

    def _user(self) -> dict[str, str]:
        return {"user": "postgres", "group": "postgres"} if self._as_postgres else {}

    def start(self) -> Cluster:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self._as_postgres:
            owner = pwd.getpwnam("postgres")
            for path in (self.directory, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        log = self.directory / "initdb.log"
        with log.open("wb") as out:
            initdb = subprocess.run(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--locale=C",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                **self._user(),  # type: ignore[arg-type]  # user/group are str here
            )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed: {log.read_text()[-2000:]}")
        options = ["-c", "listen_addresses=127.0.0.1", "-p", str(self.port)]
        options += ["-k", str(self.socket_dir), "-c", "max_connections=200"]
        for name, value in self.settings.items():
            options += ["-c", f"{name}={value}"]
        self._server_log = (self.directory / "server.log").open("wb")
        self._process = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), *options],
            stdout=self._server_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **self._user(),  # type: ignore[arg-type]
        )
        self._watch_owner()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            ready = subprocess.run(
                [
                    str(self.bin / "pg_isready"),
                    "-q",
                    "-h",
                    str(self.socket_dir),
                    "-p",
                    str(self.port),
                ]
            )
            if ready.returncode == 0:
                return self
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    "PostgreSQL did not start: "
                    + (self.directory / "server.log").read_text()[-2000:]
                )
            time.sleep(0.1)

    def _watch_owner(self) -> None:
        """A run killed with SIGKILL cannot stop its cluster: a watchdog outside it does, and
        removes the cluster's directory, once this process is gone."""
        assert self._process is not None
        script = (
            'while kill -0 "$1" 2>/dev/null; do sleep 2; done; kill -INT "$2" 2>/dev/null; '
            'while kill -0 "$2" 2>/dev/null; do sleep 0.5; done; rm -rf "$3"'
        )
        self._watchdog = subprocess.Popen(
            [
                "sh",
                "-c",
                script,
                "watchdog",
                str(os.getpid()),
                str(self._process.pid),
                str(self.directory),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    def tcp_url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "suanli") -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)  # "fast" shutdown
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog = None
        if hasattr(self, "_server_log"):
            self._server_log.close()


@contextmanager
def running_cluster(settings: dict[str, str] | None = None) -> Iterator[Cluster]:
    directory = Path(tempfile.mkdtemp(prefix="suanli-pg-"))
    cluster = Cluster(directory, settings)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> int:
    settings = BENCH_SETTINGS if "--bench" in sys.argv else TEST_SETTINGS
    with running_cluster(settings) as cluster:
        print(cluster.create_database(), flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
