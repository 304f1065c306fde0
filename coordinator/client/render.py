"""What `suanli` prints for people: job details, job and market tables, the account.

Money is shown from integer micro-yuan one way everywhere, `shared.money.format_money`
("¥1,234.50"); times are integer milliseconds shown in UTC. Machine-readable output is not
made here: `--json` prints the coordinator's objects as they came (money in integer µ¥).
"""

from __future__ import annotations

import json
import shlex
import sys
from datetime import UTC, datetime
from typing import IO, Any

from coordinator.client.units import format_cores, format_duration, format_size
from shared.money import format_money

NONE = "-"


def print_json(data: Any, out: IO[str] | None = None, *, lines: bool = False) -> None:
    """JSON on stdout: indented for one object, one object per line for a stream."""
    out = out or sys.stdout
    out.write(json.dumps(data, ensure_ascii=False, indent=None if lines else 2) + "\n")
    out.flush()


def when(ms: int | None) -> str:
    if ms is None:
        return NONE
    moment = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def price(micro: int | None, unit: str = " per GPU-hour") -> str:
    if micro is None:
        return NONE
    return f"{format_money(micro)}{unit}"


def yuan(micro: int | None) -> str:
    return NONE if micro is None else format_money(micro)


def labels_text(labels: dict[str, str] | None) -> str:
    """Labels as `kubectl get --show-labels` shows them: key=value,key=value."""
    return ",".join(f"{key}={value}" for key, value in sorted((labels or {}).items())) or NONE


def _text(value: Any) -> str:
    return NONE if value is None or value == "" or value == [] else str(value)


def job_details(job: dict[str, Any]) -> str:
    """One job as aligned `name  value` lines."""
    spec = job.get("spec") or {}
    reason = job.get("reason")
    if reason and job.get("reason_detail"):
        reason = f"{reason}: {job['reason_detail']}"
    rows: list[tuple[str, str]] = [
        ("id", _text(job.get("id"))),
        ("name", _text(spec.get("name"))),
        ("labels", labels_text(spec.get("labels"))),
        (
            "state",
            _text(job.get("state"))
            + (
                " (cancel requested)"
                if job.get("cancel_requested")
                and job.get("state") not in ("cancelled", "succeeded", "failed", "lost")
                else ""
            ),
        ),
        ("reason", _text(reason)),
        ("agent", _text(job.get("agent_id"))),
        ("GPUs", ", ".join(job.get("gpu_uuids") or []) or NONE),
        ("price", price(job.get("price_per_gpu_hour_micro_yuan"))),
    ]
    for field, label in (
        ("charged_micro_yuan", "charged"),
        ("voucher_micro_yuan", "  voucher"),
        ("deferred_micro_yuan", "  deferred"),
    ):
        if field in job:
            rows.append((label, price(job[field], unit="")))
    rows += [
        ("created", when(job.get("created_at_ms"))),
        ("started", when(job.get("started_at_ms"))),
        ("lease ends", when(job.get("lease_ends_at_ms"))),
        ("ended", when(job.get("ended_at_ms"))),
        ("exit code", _text(job.get("exit_code"))),
        ("attempts", _text(job.get("attempts"))),
    ]
    if spec:
        models = ", ".join(spec.get("gpu_models") or []) or "any"
        memory = spec.get("min_gpu_memory_bytes") or 0
        rows += [
            ("image", _text(spec.get("image"))),
            ("command", shlex.join(spec.get("command") or []) or "(the image's default)"),
            (
                "asked for",
                f"{spec.get('gpus')} GPU(s), model {models}"
                + (f", at least {format_size(memory)} each" if memory else ""),
            ),
            (
                "limits",
                f"{format_cores(spec['cpus_milli'])} CPUs, "
                f"{format_size(spec['memory_bytes'])} memory, "
                f"{format_duration(spec['max_duration_s'])} at most"
                if {"cpus_milli", "memory_bytes", "max_duration_s"} <= spec.keys()
                else NONE,
            ),
            ("max price", price(spec.get("max_price_per_gpu_hour_micro_yuan"))),
            ("network", _text(spec.get("network", "none"))),
            ("scratch", format_size(spec["scratch_bytes"]) if spec.get("scratch_bytes") else NONE),
        ]
        if spec.get("env"):
            rows.append(("env", " ".join(sorted(spec["env"]))))
        if spec.get("secret_env"):
            rows.append(
                (
                    "secret env",
                    " ".join(f"{name}=<redacted>" for name in sorted(spec["secret_env"])),
                )
            )
        if spec.get("registry_auth"):
            rows.append(("registry auth", "given (shown to nobody)"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _console(out: IO[str] | None) -> Any:
    from rich.console import Console

    stream = out or sys.stdout
    # Piped output is read by scripts: keep rows whole instead of wrapping at 80 columns.
    width = None if stream.isatty() else 240
    return Console(file=stream, width=width, highlight=False, emoji=False, markup=False)


def jobs_table(jobs: list[dict[str, Any]], out: IO[str] | None = None) -> None:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for name in ("ID", "NAME", "STATE", "REASON", "GPUS", "PRICE/GPU-h", "IMAGE", "CREATED"):
        table.add_column(name, no_wrap=name in ("ID", "NAME", "STATE", "CREATED"))
    for job in jobs:
        spec = job.get("spec") or {}
        table.add_row(
            _text(job.get("id")),
            _text(spec.get("name")),
            _text(job.get("state")),
            _text(job.get("reason")),
            _text(spec.get("gpus")),
            yuan(job.get("price_per_gpu_hour_micro_yuan")),
            _text(spec.get("image")),
            when(job.get("created_at_ms")),
        )
    _console(out).print(table)


def market_table(summary: dict[str, Any], out: IO[str] | None = None) -> None:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for name in (
        "MODEL",
        "MEMORY",
        "GPUS",
        "FREE",
        "LEASED",
        "UNAVAILABLE",
        "ASK MIN/GPU-h",
        "MEDIAN",
        "MAX",
        "TFLOPS BF16",
    ):
        table.add_column(name, justify="left" if name in ("MODEL", "MEMORY") else "right")
    for row in summary.get("models", []):
        memory = row.get("memory_total_bytes")
        table.add_row(
            _text(row.get("model")),
            NONE if memory is None else format_size(memory),
            _text(row.get("gpus")),
            _text(row.get("free")),
            _text(row.get("leased")),
            _text(row.get("unavailable")),
            yuan(row.get("ask_min_micro_yuan")),
            yuan(row.get("ask_median_micro_yuan")),
            yuan(row.get("ask_max_micro_yuan")),
            _text(row.get("tflops_bf16_each")),
        )
    console = _console(out)
    console.print(table)
    console.print(
        f"agents online: {summary.get('agents_online', NONE)} of "
        f"{summary.get('agents_total', NONE)}; pool: "
        f"{summary.get('pflops_bf16', NONE)} PFLOPS BF16 (dense)"
    )


def mapping(data: dict[str, Any]) -> str:
    """A flat object as `name: value` lines."""
    return "\n".join(f"{key}: {_text(value)}" for key, value in data.items())


def account_text(account: dict[str, Any]) -> str:
    """An enterprise's money at a glance, in yuan; other roles just say who they are."""
    lines = [f"{account['role']} {account['id']}"]
    if account.get("role") != "enterprise" or "voucher" not in account:
        return "\n".join(lines)
    voucher = account["voucher"]

    if voucher.get("eligible"):
        lines.append(
            f"voucher {account['fiscal_year']}: {yuan(voucher['used_micro_yuan'])} used of "
            f"{yuan(voucher['cap_micro_yuan'])}, {yuan(voucher['remaining_micro_yuan'])} left "
            f"(covers {_percent(voucher['coverage_bps'])} of each charge)"
        )
    else:
        lines.append("voucher: not eligible")
    lines.append(f"city pool remaining: {yuan(account['pool_remaining_micro_yuan'])}")
    lines.append(
        f"owed (deferred): {yuan(account['deferred_balance_micro_yuan'])}, of which not yet "
        f"billed {yuan(account['unbilled_micro_yuan'])}; paid {yuan(account['paid_micro_yuan'])}"
    )
    lines.append(
        f"credit: limit {yuan(account['credit_limit_micro_yuan'])}, reserved for running jobs "
        f"{yuan(account['reserved_micro_yuan'])}, headroom {yuan(account['headroom_micro_yuan'])}"
    )
    for item in account.get("statements", []):
        lines.append(
            f"statement {item['period']}: {yuan(item['deferred_micro_yuan'])} "
            f"due {item['due_date']}, outstanding "
            f"{yuan(item['outstanding_micro_yuan'])} ({item['status']})"
        )
    if account.get("suspended"):
        lines.append(f"SUSPENDED: {account['suspended_reason']}")
    return "\n".join(lines)


def _percent(basis_points: int) -> str:
    whole, rest = divmod(basis_points, 100)
    return f"{whole}%" if not rest else f"{whole}.{rest:02d}".rstrip("0") + "%"
