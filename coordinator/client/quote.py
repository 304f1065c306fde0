"""`suanli job quote` and `suanli job submit --dry-run`: what a job would meet if posted now
(the offers that fit it, its price, its voucher share, the most it would hold), printed
without posting it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from coordinator.client import job_file, render
from coordinator.client.api import CoordinatorApi


def add_commands(
    actions: Any,
    leaf: Callable[..., argparse.ArgumentParser],
    add_submit: Callable[..., argparse.ArgumentParser],
) -> None:
    """`job quote`: `job submit` (made by `add_submit`) with its flags and job file keys, under
    another name, always a dry run."""

    def quote_leaf(commands: Any, _name: str, run: Any, *_: Any) -> argparse.ArgumentParser:
        parser = leaf(
            commands,
            "quote",
            run,
            "what a job would meet if posted now: offers, price, voucher, most reserved",
            "Ask what a job would meet if it were posted now, without posting it: the offers "
            "that fit it, the price per GPU-hour it would pay, the voucher share it would get "
            "and the most that would be reserved for it. Takes job submit's flags.",
        )
        parser.set_defaults(dry_run=True)  # --dry-run, added after, takes it as its default
        return parser

    job_file.accept_job_file(add_submit(actions, quote_leaf))


async def print_quote(api: CoordinatorApi, body: dict[str, Any], json_output: bool) -> int:
    """Ask for the quote of `body` and print it; nothing is posted."""
    answer = await api.call("POST", "/v1/jobs/quote", body=body)
    if json_output:
        render.print_json(answer)
    else:
        print(quote_text(answer))
    return 0


def quote_text(quote: dict[str, Any]) -> str:
    """A quote as aligned `name  value` lines."""
    models = ", ".join(
        f"{m['model']} {m['gpus']} GPU{'' if m['gpus'] == 1 else 's'} on {m['agents']}"
        for m in quote.get("models") or []
    )
    fitting = f"{quote['agents']} agent{'' if quote['agents'] == 1 else 's'}, " + (
        f"{quote['gpus']} free GPU{'' if quote['gpus'] == 1 else 's'}"
        + (f" ({models})" if models else "")
    )
    if quote["runs_now"]:
        verdict = "yes, if posted now"
    else:
        verdict = f"no, it would wait ({quote.get('reason')}): {quote.get('reason_detail')}"
    price = quote.get("price_per_gpu_hour_micro_yuan")
    if price is None:
        price_text = render.NONE
    else:
        exact = quote.get("price_per_gpu_hour_exact")
        price_text = ("" if exact else "at most ") + render.price(price)
        if not exact:
            price_text += " (told rounded up to two figures: the auction is sealed)"
        else:
            price_text += " (your max price)"
    coverage = quote.get("coverage_bps", 0)
    voucher = quote["voucher_micro_yuan"]
    share = (
        f"the voucher pays {coverage / 100:g}% of each charge while it lasts"
        if voucher
        else "no voucher is held for this job"
    )
    rows = [
        ("fits", fitting),
        ("would run", verdict),
        ("price", price_text),
        ("most reserved", render.yuan(quote["max_cost_micro_yuan"])),
        (
            "  voucher",
            f"{render.yuan(voucher)} ({share})",
        ),
        ("  your money", render.yuan(quote["own_money_micro_yuan"])),
    ]
    if quote.get("refused"):
        rows.append(("refused", f"posting it now would be refused: {quote['refused']}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
