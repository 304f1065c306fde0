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
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from coordinator.client import (
    arguments,
    audit,
    completion,
    env_file,
    follow,
    job_file,
    login,
    registry_login,
    render,
)
from coordinator.client.api import CoordinatorApi
from coordinator.client.connection import connection_options as _connection_options
from shared.command_line import top_parser
from shared.http_client import CoordinatorError, Refused, TransportError

ENV_COORDINATOR = "SUANLI_COORDINATOR"
ENV_TOKEN = "SUANLI_TOKEN"
ENV_CA_FILE = "SUANLI_CA_FILE"
EXIT_REFUSED = 1
EXIT_USAGE = 2

Command = Callable[[CoordinatorApi, argparse.Namespace], Awaitable[int]]


class UsageError(Exception):
    """The command line or the environment lacks something; nothing was sent."""


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

    submit = _leaf(
        actions,
        "submit",
        cmd_submit,
        "post a job; prints its id",
        "Post a job: a container image run on N GPUs for at most a given time, at no more "
        "than a given price per GPU-hour. Put the command after `--`.",
    )
    submit.add_argument("--image", required=True, help="container image reference")
    submit.add_argument(
        "--gpus",
        required=True,
        type=arguments.count("gpus", "GPUs"),
        metavar="N",
        help="number of GPUs",
    )
    submit.add_argument(
        "--min-gpu-memory",
        type=arguments.size("min_gpu_memory_bytes"),
        metavar="SIZE",
        dest="min_gpu_memory_bytes",
        help="least memory per GPU, e.g. 80G (G, GiB: binary; GB: decimal)",
    )
    submit.add_argument(
        "--gpu-model",
        action="append",
        metavar="MODEL",
        dest="gpu_models",
        help="an allowed GPU model, e.g. H100 (repeat for several; default any)",
    )
    submit.add_argument(
        "--cpus",
        type=arguments.cores("cpus_milli"),
        metavar="CORES",
        dest="cpus_milli",
        help="CPU limit in cores, e.g. 8 or 0.5 (default 4 per GPU)",
    )
    submit.add_argument(
        "--memory",
        type=arguments.size("memory_bytes"),
        metavar="SIZE",
        dest="memory_bytes",
        help="container memory limit, e.g. 64G or 64GiB (default 16 GiB per GPU)",
    )
    submit.add_argument(
        "--max-duration",
        required=True,
        type=arguments.duration("max_duration_s"),
        metavar="DURATION",
        dest="max_duration_s",
        help="longest the job may run, e.g. 90m, 1.5h, 2d, 1h30m or 1:30:00 (a unit is needed)",
    )
    submit.add_argument(
        "--max-price-per-gpu-hour",
        required=True,
        type=arguments.price,
        metavar="YUAN",
        dest="max_price_micro_yuan",
        help="most you pay per GPU-hour, in yuan, e.g. 12.50",
    )
    submit.add_argument(
        "--env",
        action=arguments.EnvAction,
        metavar="NAME=VALUE",
        default={},
        help="an environment variable for the container (repeatable)",
    )
    submit.add_argument(
        "--secret-env",
        action=arguments.EnvAction,
        metavar="NAME=VALUE",
        default={},
        help="a secret environment variable (repeatable): only the winning "
        "agent gets its value; it is never shown back or logged, and is erased "
        "when the job ends",
    )
    submit.add_argument(
        "--secret-env-file",
        action="append",
        default=[],
        metavar="FILE",
        help="secret variables from a file of NAME=VALUE lines, as docker --env-file reads "
        "them (repeatable; --secret-env wins over a file)",
    )
    submit.add_argument(
        "--registry-auth",
        metavar="FILE|saved",
        help="send credentials for the image's registry with the job: a Docker config.json's "
        "entry for it, or `saved` for those `suanli registry login` kept; only the winning "
        "agent gets them, so none are sent unless asked for",
    )
    submit.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="makes a retried submit return the first job instead of posting "
        "another (default: a fresh key each time)",
    )
    then = submit.add_mutually_exclusive_group()
    then.add_argument(
        "--wait", action="store_true", help="then wait for the job to end (as `job wait`)"
    )
    then.add_argument(
        "--follow",
        action="store_true",
        help="then print its log until it ends (as `job logs --follow`); the id goes to stderr",
    )
    submit.add_argument(
        "job_command",
        nargs="*",
        metavar="-- CMD ARGS",
        help="the command and its arguments (default: the image's own)",
    )

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

    show = _leaf(
        actions, "show", cmd_show, "a job's state, why it waits, its agent, GPUs, price and times"
    )
    show.add_argument("job_id", metavar="ID")

    follow.add_commands(actions, _leaf)

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


async def cmd_submit(api: CoordinatorApi, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "image": args.image,
        "command": list(args.job_command),
        "env": dict(args.env),
        "gpus": args.gpus,
        "max_duration_s": args.max_duration_s,
        "max_price_per_gpu_hour_micro_yuan": args.max_price_micro_yuan,
        "idempotency_key": args.idempotency_key or f"cli-{secrets.token_urlsafe(18)}",
    }
    try:
        args.secret_env = env_file.merged_secret_env(args.secret_env, args.secret_env_file or [])
    except env_file.EnvFileError as exc:
        raise UsageError(str(exc)) from None
    if args.secret_env:
        both = sorted(set(args.env) & set(args.secret_env))
        if both:
            raise UsageError(f"{', '.join(both)} is given both as --env and --secret-env")
        body["secret_env"] = dict(args.secret_env)
    registry_auth = registry_login.auth_for_image(args.image, args.registry_auth)
    if registry_auth is not None:
        body["registry_auth"] = registry_auth
    for field in ("min_gpu_memory_bytes", "gpu_models", "cpus_milli", "memory_bytes"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    job = await api.submit_job(body)
    if args.json:
        render.print_json(job, lines=args.wait or args.follow)
    elif args.follow:
        print(f"suanli: job {job['id']} posted", file=sys.stderr, flush=True)
    else:
        print(job["id"], flush=True)
    if args.wait or args.follow:
        return await follow.follow(
            api, str(job["id"]), show_logs=args.follow, json_output=args.json
        )
    return 0


async def cmd_list(api: CoordinatorApi, args: argparse.Namespace) -> int:
    answer = await api.list_jobs(args.state, args.limit)
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
