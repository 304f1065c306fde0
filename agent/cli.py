"""`suanli-agent`: the provider daemon's command line.

One function per subcommand (`cmd_<name>`), each registered by its own `_add_<name>`
and returning the process exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from importlib.metadata import version

from agent.inventory import Inventory, read_inventory, total_tflops_bf16_milli
from shared.gpu_models import tflops_display

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="suanli-agent",
        description="Suanli provider agent: reports NVML-measured GPU capacity, runs leased "
        "containers and signs usage receipts.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('suanli')}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_inventory(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handler: Handler = args.handler
    return handler(args)


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
    command.set_defaults(handler=cmd_inventory)


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
    console.print(
        f"host {host['hostname']}: {host['cpu_count']} CPUs ({_or_dash(host['cpu_percent'])}% busy), "
        f"memory {_gib(host['memory_available_bytes'])}/{_gib(host['memory_total_bytes'])} GiB free, "
        f"disk {host['disk_path']} {_gib(host['disk_free_bytes'])}/{_gib(host['disk_total_bytes'])} GiB free",
        highlight=False,
    )
    console.print(
        f"driver {_or_dash(inventory['driver_version'])}, CUDA {_or_dash(inventory['cuda_version'])}",
        highlight=False,
    )
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
