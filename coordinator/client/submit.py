"""`suanli job submit`: its flags, and the body it posts from them."""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Callable
from typing import Any

from coordinator.client import (
    arguments,
    env_file,
    follow,
    job_labels,
    quote,
    registry_login,
    render,
)
from coordinator.client.api import CoordinatorApi
from coordinator.client.arguments import UsageError
from coordinator.client.units import format_exact_size
from shared.messages.placement import MIN_SCRATCH_BYTES


def add_submit(
    actions: Any, leaf: Callable[..., argparse.ArgumentParser]
) -> argparse.ArgumentParser:
    """`job submit`, made by `leaf(actions, name, run, help, description)`."""
    submit = leaf(
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
        "--scratch",
        type=_scratch_size,
        metavar="SIZE",
        dest="scratch_bytes",
        help="a writable volume of this size at /scratch on the provider's data disk, "
        "deleted when the job ends, e.g. 200G (default none: /scratch is small and in memory)",
    )
    submit.add_argument(
        "--network",
        choices=("none", "egress"),
        help="none (the default): no network; egress: outbound to the internet only, never "
        "the provider's LAN, on agents that allow it",
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
    job_labels.add_flags(submit)
    submit.add_argument(
        "--dry-run",
        action="store_true",
        help="post nothing: say what the job would meet now (as `job quote`)",
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

    return submit


def _scratch_size(text: str) -> int:
    size = arguments.size("scratch_bytes")(text)
    if size < MIN_SCRATCH_BYTES:
        shown = format_exact_size(MIN_SCRATCH_BYTES)
        raise argparse.ArgumentTypeError(f"at least {shown} ({MIN_SCRATCH_BYTES} bytes)")
    return size


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
    for field in (
        "min_gpu_memory_bytes",
        "gpu_models",
        "cpus_milli",
        "memory_bytes",
        "scratch_bytes",
        "network",
    ):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    body.update(job_labels.body_fields(args))
    if args.dry_run:
        return await quote.print_quote(api, body, args.json)
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
