"""Following a job to its end: `suanli job logs --follow`, `suanli job wait`, and
`suanli job submit --follow / --wait`.

The follower reads the job's log from where it got to (or, for `wait`, only the job), says on
stderr why a job waits, and ends with the job: its exit status is the container's exit code,
or EXIT_NO_CODE, with the reason on stderr, for a job that ended without a failing one.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO, Any

from coordinator.client import arguments, render
from coordinator.client.api import CoordinatorApi
from coordinator.client.arguments import UsageError
from coordinator.client.units import format_duration
from shared.http_client import BadAnswer, CoordinatorError, Unreachable

POLL_S = 0.5  # after a read that brought nothing new, or less than a full page
WAITING_POLL_S = 1.0  # while the job waits for an agent
PAGE_BYTES = 256 * 1024
# a page this close to PAGE_BYTES was cut before a split UTF-8 character: more follows at once
FULL_PAGE_BYTES = PAGE_BYTES - 3
RETRY_S = (1.0, 2.0, 4.0, 8.0, 15.0)  # after a busy or unreachable coordinator, capped
GIVE_UP_S = 120.0  # of such trouble in a row, once the job was read at least once
MAX_NOTES = 10  # why-it-waits lines, however often a coordinator changes its mind
MAX_NOTE_CHARS = 300
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})

EXIT_NO_CODE = 125
EXIT_TIMED_OUT = 124  # as GNU timeout: --timeout passed and the job goes on
WAITING = frozenset({"pending", "leased"})
FINAL = frozenset({"succeeded", "failed", "cancelled", "lost"})

EXIT_STATUS_HELP = f"""\
exit status, once the job has ended:
  0         the job succeeded
  1-255     the container's exit code, when it ended with one that is not 0
            (a cancelled or stopped job's container often exits 137 or 143)
  {EXIT_NO_CODE}       the job ended without a failing exit code: cancelled before it
            ran, lost with its agents, failed to start (its image), or stopped
            (cancelled, out of credit, out of time) with exit code 0; the reason
            is on stderr
  {EXIT_TIMED_OUT}       --timeout passed before the job ended; the job goes on
  1 or 2    before that: the coordinator refused (an unknown job, another
            enterprise's job) or could not be reached for {GIVE_UP_S:g} s (1), or the
            command line is wrong (2); the error is on stderr
while it waits for an agent, why it waits is said on stderr"""


def exit_status(job: dict[str, Any]) -> int:
    """The exit status of a follower for a job that has ended."""
    code = job.get("exit_code")
    if job.get("state") == "succeeded":
        return 0
    if type(code) is int and 0 < code <= 255:
        return code
    return EXIT_NO_CODE


def ending(job: dict[str, Any]) -> str:
    """One sentence on how an ended job ended."""
    state, code = job.get("state"), job.get("exit_code")
    detail = job.get("reason_detail") or job.get("reason")
    text = f"job {job.get('id')} {state}"
    if type(code) is int and state != "succeeded" and (detail is None or str(code) not in detail):
        text += f" (exit code {code})"
    return _printable(f"{text}: {detail}" if detail else text)


_TERMINAL_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def for_terminal(data: str, out: IO[str]) -> str:
    """A job's output as a terminal may show it: control characters other than newline, tab
    and carriage return (escape sequences that write the clipboard, retitle the window or move
    the cursor over earlier lines) become "?". Output to a pipe or a file is left as it is."""
    isatty = getattr(out, "isatty", None)
    if isatty is None or not isatty():
        return data
    return _TERMINAL_CONTROLS.sub("?", data)


def _printable(text: str) -> str:
    """A coordinator's words as one terminal line: no control characters, bounded."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= MAX_NOTE_CHARS else clean[: MAX_NOTE_CHARS - 1] + "…"


@dataclass
class Follower:
    """Follows one job until it ends; `show_logs` prints its log on the way."""

    api: CoordinatorApi
    job_id: str
    show_logs: bool
    json_output: bool = False
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    err: IO[str] = field(default_factory=lambda: sys.stderr)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    offset: int = 0
    _noted: tuple[Any, Any] | None = None
    _notes: int = 0
    _answered: bool = False

    async def run(self) -> int:
        while True:
            job: dict[str, Any] | None = None
            more = False
            if self.show_logs:
                page = await self._call(self._page)
                more, state, complete = self._print_page(page)
                # an ended job's last page says complete; a server that never does is not
                # followed forever
                done = complete or (state in FINAL and not more)
            else:
                job = await self._call(self._job)
                state = job.get("state")
                done = state in FINAL
            if done:
                job = job or await self._call(self._job)
                return self._end(job)
            if state in WAITING:
                self._note_waiting(job or await self._call(self._job))
            if not more:
                await self.sleep(WAITING_POLL_S if state in WAITING else POLL_S)

    def _print_page(self, page: dict[str, Any]) -> tuple[bool, Any, bool]:
        """Print a log page; (more follows at once, the job's state, the log is complete)."""
        data, next_offset = page.get("data"), page.get("next_offset")
        if type(data) is not str or type(next_offset) is not int:
            raise BadAnswer(f"the coordinator's log page for job {self.job_id} is malformed")
        if not self.offset <= next_offset <= self.offset + PAGE_BYTES or (
            data and next_offset == self.offset
        ):
            raise BadAnswer(
                f"the coordinator's log page for job {self.job_id} does not follow on from "
                f"byte {self.offset}"
            )
        read, self.offset = next_offset - self.offset, next_offset
        complete = page.get("complete") is True
        if self.json_output:
            if data or complete:
                render.print_json(page, self.out, lines=True)
        elif data:
            self.out.write(for_terminal(data, self.out))
            self.out.flush()
        return bool(data) and read >= FULL_PAGE_BYTES, page.get("job_state"), complete

    def _note_waiting(self, job: dict[str, Any]) -> None:
        state, reason = job.get("state"), job.get("reason")
        if state not in WAITING or (state, reason) == self._noted or self._notes >= MAX_NOTES:
            return
        self._noted, self._notes = (state, reason), self._notes + 1
        why = job.get("reason_detail") or reason or "waiting"
        self._say(f"job {self.job_id} is {state}: {why}")

    def _end(self, job: dict[str, Any]) -> int:
        status = exit_status(job)
        if not self.show_logs:
            if self.json_output:
                render.print_json(job, self.out)
            elif status == 0:
                print(ending(job), file=self.out, flush=True)
        if status != 0:
            self._say(ending(job))
        return status

    def _say(self, text: str) -> None:
        print(f"suanli: {_printable(text)}", file=self.err, flush=True)

    async def _call(self, request: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """One answer; once the job has been read, a busy or unreachable coordinator is asked
        again (after a growing pause) until GIVE_UP_S of it in a row."""
        troubled, attempt = 0.0, 0
        while True:
            try:
                answer = await request()
            except CoordinatorError as exc:
                transient = isinstance(exc, Unreachable) or exc.status in TRANSIENT_STATUSES
                if not (transient and self._answered) or troubled >= GIVE_UP_S:
                    raise
                if attempt == 0:
                    self._say(f"{exc.detail}; trying again for up to {GIVE_UP_S:g} s")
                pause = RETRY_S[min(attempt, len(RETRY_S) - 1)]
                attempt, troubled = attempt + 1, troubled + pause
                await self.sleep(pause)
                continue
            self._answered = True
            return answer

    def _job(self) -> Awaitable[dict[str, Any]]:
        return self.api.job(self.job_id)

    def _page(self) -> Awaitable[dict[str, Any]]:
        return self.api.job_logs(self.job_id, self.offset, PAGE_BYTES)


async def follow(
    api: CoordinatorApi,
    job_id: str,
    *,
    show_logs: bool,
    json_output: bool = False,
    timeout_s: int | None = None,
) -> int:
    """Follow a job to its end, or for at most `timeout_s`; the exit status (see
    EXIT_STATUS_HELP)."""
    follower = Follower(api, job_id, show_logs, json_output)
    try:
        async with asyncio.timeout(timeout_s):
            return await follower.run()
    except TimeoutError:
        assert timeout_s is not None
        follower._say(
            f"job {job_id} has not ended after {format_duration(timeout_s)}; it goes on "
            f"(suanli job cancel {job_id} stops it)"
        )
        return EXIT_TIMED_OUT


# -- the commands -----------------------------------------------------------------------


async def cmd_logs(api: CoordinatorApi, args: argparse.Namespace) -> int:
    if args.timeout_s is not None and not args.follow:
        raise UsageError("--timeout goes with --follow")
    if args.follow:
        return await follow(
            api, args.job_id, show_logs=True, json_output=args.json, timeout_s=args.timeout_s
        )
    offset = 0
    while True:
        chunk = await api.job_logs(args.job_id, offset)
        data = str(chunk.get("data", ""))
        offset = int(chunk["next_offset"])
        last = bool(chunk.get("complete")) or not data
        if args.json:
            if data or last:
                render.print_json(chunk, lines=True)
        elif data:
            sys.stdout.write(for_terminal(data, sys.stdout))
            sys.stdout.flush()
        if last:
            return 0


async def cmd_wait(api: CoordinatorApi, args: argparse.Namespace) -> int:
    return await follow(
        api, args.job_id, show_logs=False, json_output=args.json, timeout_s=args.timeout_s
    )


def add_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=arguments.duration("max_duration_s"),
        metavar="DURATION",
        dest="timeout_s",
        help=f"give up waiting after this long, e.g. 10m or 1h (exit {EXIT_TIMED_OUT}); "
        "the job goes on",
    )


def add_commands(actions: Any, leaf: Callable[..., argparse.ArgumentParser]) -> None:
    """`job logs` and `job wait`, made by `leaf(actions, name, run, help, description)`."""
    logs = leaf(
        actions,
        "logs",
        cmd_logs,
        "print a job's log; with --follow, until the job ends",
        "Print a job's log. With --follow, keep printing what the job prints until it\n"
        "ends, then exit with its exit code.",
    )
    logs.epilog = "with --follow, " + EXIT_STATUS_HELP
    logs.formatter_class = argparse.RawDescriptionHelpFormatter
    logs.add_argument("job_id", metavar="ID")
    logs.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep printing until the job has ended and its log is complete",
    )
    add_timeout(logs)
    wait = leaf(
        actions,
        "wait",
        cmd_wait,
        "wait for a job to end; exits with its exit code",
        "Wait for a job to end, saying on stderr why it waits for an agent, then exit\n"
        "with its exit code.",
    )
    wait.epilog = EXIT_STATUS_HELP
    wait.formatter_class = argparse.RawDescriptionHelpFormatter
    wait.add_argument("job_id", metavar="ID")
    add_timeout(wait)
