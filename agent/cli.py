"""`suanli-agent`: the provider daemon's command line.

One function per subcommand (`cmd_<name>`), each registered by its own `_add_<name>`
and returning the process exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.config import AgentSettings, load_agent_settings
from agent.inventory import Inventory, read_inventory, total_tflops_bf16_milli
from agent.state import AgentState
from shared.command_line import run_command, top_parser
from shared.errors import SuanliError
from shared.gpu_models import tflops_display


def build_parser() -> argparse.ArgumentParser:
    parser = top_parser(
        "suanli-agent",
        "Suanli provider agent: reports NVML-measured GPU capacity, runs leased "
        "containers and signs usage receipts.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_inventory(commands)
    _add_enroll(commands)
    _add_run(commands)
    _add_self_test(commands)
    _add_rotate_key(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, (SuanliError,))


# --- inventory ---------------------------------------------------------------------------


def _add_inventory(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "inventory",
        help="show this host's GPUs (through NVML) and CPU, memory and disk",
        description="Show this host's GPUs as NVML measures them, with their dense BF16 "
        "TFLOPS, and the host's CPU, memory and disk. Without an NVIDIA driver: zero GPUs "
        "and one line saying so.",
    )
    command.add_argument("--json", action="store_true", help="print machine-readable JSON")
    command.add_argument(
        "--disk-path", default="/", help="filesystem whose size and free space to report"
    )
    command.set_defaults(run=cmd_inventory)


def cmd_inventory(args: argparse.Namespace) -> int:
    inventory = read_inventory(disk_path=args.disk_path)
    if args.json:
        json.dump(inventory, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        if inventory["nvml_note"]:
            print(inventory["nvml_note"], file=sys.stderr)
        _print_inventory_table(inventory)
    return 0


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.1f}"


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def _print_inventory_table(inventory: Inventory) -> None:
    # Imported here: only people read tables, and scripts calling --json need not pay for it.
    from rich.console import Console, JustifyMethod
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        # Piped output: never wrap or cut a UUID someone will copy.
        console = Console(width=200)
    host = inventory["host"]
    busy = _or_dash(host["cpu_percent"])
    memory = f"{_gib(host['memory_available_bytes'])}/{_gib(host['memory_total_bytes'])}"
    disk = f"{_gib(host['disk_free_bytes'])}/{_gib(host['disk_total_bytes'])}"
    console.print(
        f"host {host['hostname']}: {host['cpu_count']} CPUs ({busy}% busy), "
        f"memory {memory} GiB free, disk {host['disk_path']} {disk} GiB free",
        highlight=False,
    )
    driver, cuda = _or_dash(inventory["driver_version"]), _or_dash(inventory["cuda_version"])
    console.print(f"driver {driver}, CUDA {cuda}", highlight=False)
    gpus = inventory["gpus"]
    if not gpus:
        console.print("GPUs: 0", highlight=False)
        return
    table = Table(title=None, box=None, pad_edge=False)
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("#", "right"),
        ("UUID", "left"),
        ("name", "left"),
        ("CC", "left"),
        ("mem used/total GiB", "right"),
        ("util %", "right"),
        ("temp °C", "right"),
        ("power/limit W", "right"),
        ("energy kJ", "right"),
        ("BF16 TFLOPS", "right"),
        ("health", "left"),
    )
    for column, justify in columns:
        table.add_column(column, justify=justify, no_wrap=column == "UUID")
    for gpu in gpus:
        power = "-" if gpu["power_mw"] is None else str(gpu["power_mw"] // 1000)
        limit = "-" if gpu["power_limit_mw"] is None else str(gpu["power_limit_mw"] // 1000)
        table.add_row(
            str(gpu["index"]),
            _or_dash(gpu["uuid"]),
            _or_dash(gpu["name"]),
            _or_dash(gpu["compute_capability"]),
            f"{_gib(gpu['memory_used_bytes'])}/{_gib(gpu['memory_total_bytes'])}",
            _or_dash(gpu["utilization_gpu_pct"]),
            _or_dash(gpu["temperature_c"]),
            f"{power}/{limit}",
            "-" if gpu["energy_mj"] is None else str(gpu["energy_mj"] // 1_000_000),
            _or_dash(gpu["tflops_bf16"]),
            "ok" if gpu["healthy"] else f"UNHEALTHY: {gpu['health_reason']}",
        )
    console.print(table, highlight=False)
    total = tflops_display(total_tflops_bf16_milli(gpus))
    console.print(f"GPUs: {len(gpus)}, {total} dense BF16 TFLOPS", highlight=False)


# --- enroll ------------------------------------------------------------------------------

DEFAULT_STATE_DIR = AgentSettings().state_dir


def _add_enroll(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "enroll",
        help="register this host's new key with a coordinator",
        description="Create this host's Ed25519 key (mode 0600) and register it with the "
        "coordinator using the provider's one-time enrolment token.",
    )
    command.add_argument(
        "--coordinator",
        required=True,
        help="coordinator URL (https://...), or the URLs of the leader and its standbys "
        "separated by commas",
    )
    command.add_argument(
        "--token", required=True, help="enrolment token from the coordinator's operator"
    )
    command.add_argument(
        "--state-dir", default=DEFAULT_STATE_DIR, help="where the key and spool live"
    )
    command.add_argument("--ca-file", help="CA bundle for the coordinator's certificate")
    command.add_argument(
        "--hostname", help="name shown to the operator (default: this host's name)"
    )
    command.set_defaults(run=cmd_enroll)


def cmd_enroll(args: argparse.Namespace) -> int:
    import asyncio

    from agent.coordinator_client import CoordinatorClient
    from shared.coordinator_urls import parse_coordinator_urls

    urls = parse_coordinator_urls(args.coordinator)
    state = AgentState(args.state_dir)
    if state.enrolment_path.exists():
        enrolled = state.enrolment()
        print(
            f"suanli-agent: already enrolled as {enrolled['agent_id']} with "
            f"{', '.join(state.coordinator_urls())}; remove {state.directory} to enrol again",
            file=sys.stderr,
        )
        return 1
    key = state.key_for_enrolment()

    async def enrol() -> dict[str, object]:
        async with CoordinatorClient(urls, key, ca_file=args.ca_file) as client:
            return await client.enrol(args.token, args.hostname)

    answer = asyncio.run(enrol())
    state.save_enrolment(
        {
            "coordinator_urls": list(urls),
            "agent_id": answer["agent_id"],
            "provider_id": answer["provider_id"],
            "ca_file": args.ca_file,
        }
    )
    print(f"enrolled: agent {answer['agent_id']} of provider {answer['provider_id']}")
    print(f"key: {state.key_path} (0600); next: suanli-agent run --state-dir {state.directory}")
    return 0


# --- run ---------------------------------------------------------------------------------


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    epilog = "settings (agent.toml, [agent] table):\n" + "\n".join(
        f"  {name} = {default!r}\n      {help}" for name, default, help in AgentSettings.describe()
    )
    command = commands.add_parser(
        "run",
        help="run the agent daemon",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Heartbeat NVML-measured capacity, run leased containers, sign receipts.",
    )
    _add_common_run_flags(command)
    command.set_defaults(run=cmd_run)


def _add_common_run_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", type=Path, help="agent.toml")
    command.add_argument("--state-dir", help=f"state directory (default {DEFAULT_STATE_DIR})")
    command.add_argument("--ask-per-gpu-hour", help="ask price in yuan per GPU-hour, e.g. 12.50")
    command.add_argument("--engine-socket", help="Docker Engine API socket of Docker or Podman")
    command.add_argument(
        "--coordinator",
        help="coordinator URL, or several separated by commas (default: the enrolment's)",
    )


def _settings(args: argparse.Namespace) -> AgentSettings:
    return (
        load_agent_settings(args.config)
        .with_overrides(
            state_dir=args.state_dir,
            ask_per_gpu_hour=args.ask_per_gpu_hour,
            engine_socket=args.engine_socket,
        )
        .with_coordinators(args.coordinator)
        .validate()
    )


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from agent.daemon import AgentDaemon
    from agent.metrics import serve_metrics

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = _settings(args)
    state = AgentState(settings.state_dir)
    if settings.ca_file is None and state.enrolment_path.exists():
        ca_file = state.enrolment().get("ca_file")
        settings = settings.with_overrides(ca_file=ca_file)

    async def serve() -> None:
        daemon = AgentDaemon(settings, state)
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        try:
            async with serve_metrics(daemon):
                await daemon.run()
        except asyncio.CancelledError:
            logging.getLogger("agent").info(
                "stopping; running jobs keep running and are re-adopted"
            )

    asyncio.run(serve())
    return 0


# --- self-test ---------------------------------------------------------------------------


def _add_self_test(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "self-test",
        help="check key, enrolment, coordinator, container engine and GPUs",
        description="Check everything the agent needs and say what is wrong, one line each.",
    )
    _add_common_run_flags(command)
    command.add_argument("--json", action="store_true", help="machine-readable output")
    command.set_defaults(run=cmd_self_test)


def cmd_self_test(args: argparse.Namespace) -> int:
    import asyncio

    from agent.self_test import run_checks

    results = asyncio.run(run_checks(_settings(args)))
    if args.json:
        json.dump(
            [{"check": c, "ok": ok, "detail": d} for c, ok, d in results], sys.stdout, indent=2
        )
        sys.stdout.write("\n")
    else:
        for check, ok, detail in results:
            print(f"{'ok  ' if ok else 'FAIL'} {check}: {detail}")
    return 0 if all(ok for _, ok, _ in results) else 1


# --- rotate-key --------------------------------------------------------------------------


def _add_rotate_key(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "rotate-key",
        help="replace this host's key (stop the agent first)",
        description="Make a new Ed25519 key and have the coordinator take it in place of the "
        "old one, which signs the change. Run it with the agent stopped and no lease or "
        "unacknowledged receipt left; start the agent again after it.",
    )
    command.add_argument(
        "--state-dir", default=DEFAULT_STATE_DIR, help="where the key and spool live"
    )
    command.set_defaults(run=cmd_rotate_key)


def cmd_rotate_key(args: argparse.Namespace) -> int:
    import asyncio

    from agent.coordinator_client import CoordinatorClient
    from agent.spool import Spool
    from shared.http_client import CoordinatorError
    from shared.identity import PrivateKey, load_private_key, save_private_key

    state = AgentState(args.state_dir)
    enrolled = state.enrolment()
    old_key = state.load_key()
    if state.spool_path.exists():
        spool = Spool(state.spool_path)
        try:
            busy = len(spool.leases()) + len(spool.pending_receipts(limit=1))
        finally:
            spool.close()
        if busy:
            print(
                "suanli-agent: this host still has leases or unacknowledged receipts; let them "
                "finish with the agent running, stop it, then rotate",
                file=sys.stderr,
            )
            return 1
    # the new key is kept beside the old until the coordinator has it: an interrupted
    # rotation is finished, not repeated, by the next run
    new_path = state.key_path.with_name(state.key_path.name + ".new")
    if new_path.exists():
        new_key = load_private_key(new_path)
    else:
        new_key = PrivateKey.generate()
        save_private_key(new_path, new_key)
    urls, ca_file = state.coordinator_urls(), enrolled.get("ca_file")

    async def rotate() -> dict[str, object]:
        async with CoordinatorClient(urls, old_key, ca_file=ca_file) as client:
            try:
                return await client.rotate_key(new_key)
            except CoordinatorError as exc:
                if exc.status != 401:
                    raise
        async with CoordinatorClient(urls, new_key, ca_file=ca_file) as client:  # done already?
            await client.leases(-1, 0)
        return {"agent_id": new_key.public.agent_id, "provider_id": enrolled["provider_id"]}

    answer = asyncio.run(rotate())
    new_path.replace(state.key_path)
    state.save_enrolment(
        {
            **enrolled,
            "agent_id": answer["agent_id"],
            "previous_agent_ids": [
                *enrolled.get("previous_agent_ids", []),
                old_key.public.agent_id,
            ],
        }
    )
    print(
        f"key rotated: agent {old_key.public.agent_id} is now {answer['agent_id']}; "
        f"key: {state.key_path} (0600)"
    )
    return 0
