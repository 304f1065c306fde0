"""Money shown one way everywhere: `¥1,000,000,000.00`, two decimals unless the amount needs
more; integer µ¥ only in `--json`. Checked on the formatter and on the real commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from coordinator_harness import CoordinatorProcess
from hypothesis import given
from hypothesis import strategies as st
from suanli_run import ok, suanli

from shared.money import MAX_MICRO_YUAN, format_money, parse_yuan

JOB = ["job", "submit", "--image", "busybox:latest", "--gpus", "1", "--max-duration", "10m"]


@pytest.mark.parametrize(
    ("micro", "shown"),
    [
        (1_000_000_000_000_000, "¥1,000,000,000.00"),
        (1_234_500_000, "¥1,234.50"),
        (999_000_000, "¥999.00"),
        (12_345_678, "¥12.345678"),
        (1, "¥0.000001"),
        (0, "¥0.00"),
        (-1_500_000_000, "-¥1,500.00"),
    ],
)
def test_amounts(micro: int, shown: str) -> None:
    assert format_money(micro) == shown


@given(st.integers(min_value=-MAX_MICRO_YUAN, max_value=MAX_MICRO_YUAN))
def test_every_amount_reads_back_exactly_with_separators_every_three_digits(micro: int) -> None:
    shown = format_money(micro)
    sign, _, number = shown.partition("¥")
    assert sign in ("", "-") and (sign == "-") == (micro < 0)
    whole, _, decimals = number.partition(".")
    groups = whole.split(",")
    assert 1 <= len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:])
    assert 2 <= len(decimals) <= 6 and (len(decimals) == 2 or not decimals.endswith("0"))
    assert parse_yuan(sign + number.replace(",", ""), allow_negative=True) == micro


def test_the_client_and_the_admin_cli_show_money_alike(
    coordinator: CoordinatorProcess, tmp_path: Path
) -> None:
    token = coordinator.add_enterprise(41)
    env = {"SUANLI_COORDINATOR": coordinator.url, "SUANLI_TOKEN": token}
    price = ["--max-price-per-gpu-hour", "123456.789"]
    job_id = ok(suanli(*JOB, *price, home=tmp_path, env=env)).stdout.strip()
    shown = ok(suanli("job", "show", job_id, home=tmp_path, env=env)).stdout
    assert "¥123,456.789 per GPU-hour" in shown
    assert "µ¥" not in shown
    as_json = ok(suanli("job", "show", job_id, "--json", home=tmp_path, env=env)).json()
    assert as_json["spec"]["max_price_per_gpu_hour_micro_yuan"] == 123_456_789_000

    enterprise = ok(suanli("account", "--json", home=tmp_path, env=env)).json()["id"]
    limit = coordinator.admin("set-credit-limit", "--enterprise", enterprise, "--amount", "2500000")
    assert limit.stdout.strip() == f"credit limit of {enterprise} is now ¥2,500,000.00"
    account = ok(suanli("account", home=tmp_path, env=env)).stdout
    assert "credit: limit ¥2,500,000.00" in account and "µ¥" not in account
    listed = ok(suanli("job", "list", home=tmp_path, env=env)).stdout
    assert "µ¥" not in listed
