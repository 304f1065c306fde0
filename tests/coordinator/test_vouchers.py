"""Vouchers: the split of each charge, the policy table, periods, statements, suspension and
reinstatement, and the rules that guard public money (caps, pool, self-dealing, one USCC)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from databases import drop_refusals
from hypothesis import given
from hypothesis import strategies as st
from ledger_world import World, uscc

from coordinator import billing
from coordinator.billing import VoucherPolicy, VoucherPolicyError, split_charge
from coordinator.storage import Session, connect, transaction
from shared import ledger_names as names
from shared.errors import SuanliError

BIG = 10**15
SEP_21 = 1_790_000_000_000  # 2026-09-21
OCT_1 = 1_790_812_800_000  # 2026-10-01T00:00Z
DAY = billing.DAY_MS


# -- the split -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((0, 5_000, BIG, BIG, False, True), (0, 0, billing.COVERED)),
        ((1_000, 0, BIG, BIG, False, True), (0, 1_000, billing.NO_COVERAGE)),
        ((1_000, 10_000, BIG, BIG, False, True), (1_000, 0, billing.COVERED)),
        ((1_000, 5_000, BIG, BIG, False, True), (500, 500, billing.COVERED)),
        (
            (1, 5_000, BIG, BIG, False, True),
            (0, 1, billing.COVERED),
        ),  # a 1 µ¥ charge rounds down to 0
        ((3, 5_000, BIG, BIG, False, True), (1, 2, billing.COVERED)),
        ((10, 7_777, BIG, BIG, False, True), (7, 3, billing.COVERED)),
        ((1, 10_000, BIG, BIG, False, True), (1, 0, billing.COVERED)),
        (
            (1_000, 5_000, BIG, 200, False, True),
            (200, 800, billing.POOL_EXHAUSTED),
        ),  # pool runs out mid-charge
        ((1_000, 5_000, BIG, 0, False, True), (0, 1_000, billing.POOL_EXHAUSTED)),
        (
            (1_000, 5_000, 100, BIG, False, True),
            (100, 900, billing.CAP_EXHAUSTED),
        ),  # cap below the share
        ((1_000, 5_000, 0, BIG, False, True), (0, 1_000, billing.CAP_EXHAUSTED)),
        ((1_000, 5_000, 300, 300, False, True), (300, 700, billing.CAP_EXHAUSTED)),
        ((1_000, 5_000, 500, 500, False, True), (500, 500, billing.COVERED)),
        ((1_000, 5_000, 100, 50, False, True), (50, 950, billing.POOL_EXHAUSTED)),
        ((2**62, 5_000, 2**62, 2**62, False, True), (2**61, 2**61, billing.COVERED)),
        ((2**62 - 1, 5_000, 2**62, 2**62, False, True), (2**61 - 1, 2**61, billing.COVERED)),
        (
            (2**62, 10_000, 10**15, 2**62, False, True),
            (10**15, 2**62 - 10**15, billing.CAP_EXHAUSTED),
        ),
        (
            (2**62, 1, 2**62, 2**62, False, True),
            (2**62 // 10_000, 2**62 - 2**62 // 10_000, billing.COVERED),
        ),
        ((1_000, 5_000, BIG, BIG, True, True), (0, 1_000, billing.SELF_DEALING)),
        ((1_000, 5_000, BIG, BIG, True, False), (0, 1_000, billing.SELF_DEALING)),
        ((1_000, 5_000, BIG, BIG, False, False), (0, 1_000, billing.NOT_ELIGIBLE)),
    ],
)
def test_split_table(args: tuple[Any, ...], expected: tuple[int, int, str]) -> None:
    assert split_charge(*args) == expected


@pytest.mark.parametrize(
    "args",
    [
        (-1, 5_000, 0, 0, False, True),
        (1.0, 5_000, 0, 0, False, True),
        (True, 5_000, 0, 0, False, True),
        (10, 10_001, 0, 0, False, True),
        (10, -1, 0, 0, False, True),
        (10, 5_000, -1, 0, False, True),
        (10, 5_000, 0, -1, False, True),
    ],
)
def test_split_refuses_what_is_not_money(args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError, match="must be"):
        split_charge(*args)


MONEY = st.one_of(st.integers(0, 100), st.integers(0, 2**62))


@given(
    charge=MONEY,
    bps=st.integers(0, 10_000),
    cap=MONEY,
    pool=MONEY,
    self_dealing=st.booleans(),
    allowed=st.booleans(),
)
def test_split_properties(
    charge: int, bps: int, cap: int, pool: int, self_dealing: bool, allowed: bool
) -> None:
    voucher, deferred, reason = split_charge(charge, bps, cap, pool, self_dealing, allowed)
    assert type(voucher) is int and type(deferred) is int
    assert voucher + deferred == charge
    assert 0 <= voucher <= min(charge * bps // 10_000, cap, pool)
    assert deferred >= 0
    if self_dealing or not allowed or bps == 0:
        assert voucher == 0 and reason != billing.COVERED
    elif voucher < charge * bps // 10_000:
        assert reason in (billing.CAP_EXHAUSTED, billing.POOL_EXHAUSTED)
        assert voucher == (cap if reason == billing.CAP_EXHAUSTED else pool)
    else:
        assert reason == billing.COVERED
    # more money in the pool or cap never means less voucher
    assert split_charge(charge, bps, cap + 1, pool + 1, self_dealing, allowed).voucher >= voucher


# -- the policy ------------------------------------------------------------------------------


def test_policy_defaults_are_the_seed_case() -> None:
    policy = VoucherPolicy(fiscal_year=2026)
    assert policy.pool_total_micro_yuan == 10**15  # ¥1 billion
    assert policy.per_company_cap_micro_yuan == 5_000_000 * 10**6
    assert (policy.coverage_bps, policy.statement_period) == (5_000, "month")
    assert (policy.payment_terms_days, policy.grace_days) == (30, 15)
    assert policy.providers_may_be_subsidised is True
    described = {name: (default, help) for name, default, help in VoucherPolicy.describe()}
    assert set(described) == {f for f in VoucherPolicy.__dataclass_fields__}
    assert all(help for _, help in described.values())
    assert described["fiscal_year"][0] == VoucherPolicy().fiscal_year


def test_policy_from_a_toml_table() -> None:
    policy = VoucherPolicy.from_toml_table(
        {
            "fiscal_year": 2027,
            "pool_total_micro_yuan": 2 * 10**15,
            "coverage_bps": 3_000,
            "providers_may_be_subsidised": False,
        }
    )
    assert (policy.fiscal_year, policy.pool_total_micro_yuan, policy.coverage_bps) == (
        2027,
        2 * 10**15,
        3_000,
    )
    assert policy.providers_may_be_subsidised is False


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"pool_total": 5}, "has no setting 'pool_total'"),
        ({"coverage_bps": True}, "coverage_bps must be an integer"),
        ({"coverage_bps": 50.0}, "coverage_bps must be an integer"),
        ({"per_company_cap_micro_yuan": "5000000"}, "must be an integer"),
        ({"coverage_bps": 10_001}, "between 0 and 10000"),
        ({"per_company_cap_micro_yuan": -1}, "between 0 and"),
        ({"pool_total_micro_yuan": 2**63 - 1}, "between 0 and"),
        ({"statement_period": "week"}, 'must be "month"'),
        ({"fiscal_year": 26}, "not a plausible year"),
        ({"providers_may_be_subsidised": 1}, "must be true or false"),
        ({"grace_days": -3}, "between 0 and 3650"),
    ],
)
def test_policy_errors_say_what_is_wrong(table: dict[str, Any], message: str) -> None:
    with pytest.raises(VoucherPolicyError, match=message) as caught:
        VoucherPolicy.from_toml_table({"fiscal_year": 2026, **table})
    assert caught.value.code == "bad_voucher_policy" and "[vouchers]" in caught.value.detail


def test_policy_from_the_coordinator_file(tmp_path: Path) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text(
        'listen = "127.0.0.1:1"\n[vouchers]\nfiscal_year = 2026\n'
        "per_company_cap_micro_yuan = 1_000_000\n"
    )
    assert billing.load_voucher_policy(config).per_company_cap_micro_yuan == 1_000_000
    config.write_text('listen = "127.0.0.1:1"\n')
    assert billing.load_voucher_policy(config) == VoucherPolicy()
    config.write_text("[vouchers\n")
    with pytest.raises(VoucherPolicyError, match="not valid TOML"):
        billing.load_voucher_policy(config)
    with pytest.raises(VoucherPolicyError, match="no configuration file"):
        billing.load_voucher_policy(tmp_path / "missing.toml")


# -- periods ---------------------------------------------------------------------------------


def test_periods_are_utc_calendar_months() -> None:
    start, end = billing.period_bounds("2026-12")
    assert (billing.period_of(start), billing.period_of(end - 1), billing.period_of(end)) == (
        "2026-12",
        "2026-12",
        "2027-01",
    )
    assert billing.period_bounds("2026-10") == (OCT_1, OCT_1 + 31 * DAY)
    for bad in ("2026-13", "2026-1", " 2026-01", "2026/01", "", 202601):
        with pytest.raises(billing.BadPeriod, match="YYYY-MM"):
            billing.period_bounds(bad)  # type: ignore[arg-type]


# -- against a database ----------------------------------------------------------------------


@pytest.fixture
def db(database_location: str) -> Iterator[Session]:
    database = connect(database_location)
    yield database
    database.conn.close()


POLICY = VoucherPolicy(
    fiscal_year=2026,
    pool_total_micro_yuan=10_000_000,
    per_company_cap_micro_yuan=3_000_000,
    coverage_bps=5_000,
    default_credit_limit_micro_yuan=50_000_000,
)


class Market:
    """Two enterprises (the second is also a provider), a provider, and a way to post usage."""

    def __init__(self, db: Session, policy: VoucherPolicy = POLICY) -> None:
        self.db, self.policy, self.world = db, policy, World(db)
        with transaction(db):
            self.ent = self.world.enterprise(uscc(1), policy)
            self.both = self.world.enterprise(uscc(2), policy)
            self.both_provider = self.world.provider(uscc(2))
            self.prov = self.world.provider(uscc(3))

    def post(
        self,
        amount: int,
        now: int = SEP_21,
        ent: str | None = None,
        prov: str | None = None,
        job: str | None = None,
    ) -> billing.Posting:
        ent, prov = ent or self.ent, prov or self.prov
        ent_code = self.db.conn.execute(
            "SELECT uscc FROM ledger_enterprises WHERE enterprise_id = ?", [ent]
        ).fetchone()[0]
        prov_code = self.db.conn.execute(
            "SELECT uscc FROM providers WHERE id = ?", [prov]
        ).fetchone()[0]
        with transaction(self.db):
            if job is None:
                job, lease = self.world.job(ent, prov, now)
            else:
                lease = self.db.conn.execute(
                    "SELECT id FROM leases WHERE job_id = ?", [job]
                ).fetchone()[0]
            digest = self.world.receipt(lease, now)
            return billing.post_usage(
                self.db,
                enterprise_id=ent,
                provider_id=prov,
                enterprise_uscc=ent_code,
                provider_uscc=prov_code,
                lease_id=lease,
                job_id=job,
                receipt_digest=digest,
                amount=amount,
                policy=self.policy,
                now_ms=now,
            )

    def run(self, fn: Any) -> Any:
        with transaction(self.db):
            return fn(self.db)


def test_suspension_names_the_statement_and_payment_reinstates(db: Session) -> None:
    market = Market(db)
    posting = market.post(4_000_000)
    assert (posting.voucher, posting.deferred, posting.period) == (2_000_000, 2_000_000, "2026-09")
    close = market.run(lambda db: billing.close_period(db, "2026-09", POLICY, OCT_1))
    (statement,) = [s for s in close.statements if s.party_id == market.ent]
    assert statement.to_dict()["due_date"] == "2026-10-31" and statement.deferred == 2_000_000
    assert statement.lines[0]["job_id"] == posting.job_id

    suspend_after = OCT_1 + 45 * DAY
    assert market.run(lambda db: billing.is_suspended(db, market.ent, suspend_after))[0] is False
    suspended, why = market.run(lambda db: billing.is_suspended(db, market.ent, suspend_after + 1))
    assert suspended
    assert "statement for 2026-09" in why and "due 2026-10-31" in why and "¥2.00 unpaid" in why
    with pytest.raises(billing.Suspended, match="2026-09"):
        market.run(
            lambda db: billing.reserve_job(
                db, "job-x", market.ent, 1_000, policy=POLICY, now_ms=suspend_after + 1
            )
        )

    market.run(
        lambda db: billing.record_payment(db, market.ent, 1_500_000, "bank-1", suspend_after + 2)
    )
    suspended, why = market.run(lambda db: billing.is_suspended(db, market.ent, suspend_after + 3))
    assert suspended and "¥0.50 unpaid" in why
    market.run(
        lambda db: billing.record_payment(db, market.ent, 500_000, "bank-2", suspend_after + 4)
    )
    assert (
        market.run(lambda db: billing.is_suspended(db, market.ent, suspend_after + 5))[0] is False
    )
    account = market.run(
        lambda db: billing.enterprise_account(db, market.ent, POLICY, suspend_after + 5)
    )
    assert account["statements"][0]["status"] == "paid" and not account["suspended"]
    assert billing.check_invariants(db) == []


def test_statements_are_paid_oldest_first(db: Session) -> None:
    market = Market(db)
    market.post(2_000_000)  # September: 1 000 000 deferred
    market.post(6_000_000, now=OCT_1 + DAY)  # October: cap leaves 500 000 voucher
    market.run(lambda db: billing.close_period(db, "2026-09", POLICY, OCT_1))
    market.run(lambda db: billing.close_period(db, "2026-10", POLICY, OCT_1 + 31 * DAY))
    market.run(
        lambda db: billing.record_payment(db, market.ent, 1_200_000, "bank-1", OCT_1 + 31 * DAY)
    )
    late = OCT_1 + 31 * DAY + 46 * DAY
    statements = market.run(lambda db: billing.enterprise_statements(db, market.ent, late))
    assert [(s["period"], s["paid_micro_yuan"], s["status"]) for s in statements] == [
        ("2026-09", 1_000_000, "paid"),
        ("2026-10", 200_000, "overdue"),
    ]
    suspended, why = market.run(lambda db: billing.is_suspended(db, market.ent, late))
    assert suspended and "2026-10" in why and "2026-09" not in why


def test_closing_a_period_freezes_it(db: Session) -> None:
    market = Market(db)
    market.post(1_000)
    with pytest.raises(billing.PeriodNotEnded, match="2026-09"):
        market.run(lambda db: billing.close_period(db, "2026-09", POLICY, OCT_1 - 1))
    first = market.run(lambda db: billing.close_period(db, "2026-09", POLICY, OCT_1))
    assert market.run(lambda db: billing.close_period(db, "2026-09", POLICY, OCT_1 + DAY)) == first
    with pytest.raises(billing.PeriodClosed, match="2026-09 is closed"):
        market.post(1_000, now=SEP_21 + 1)
    empty = market.run(lambda db: billing.close_period(db, "2026-08", POLICY, OCT_1))
    assert empty.statements == ()
    assert billing.check_invariants(db) == []


def test_the_cap_is_per_company_and_the_pool_is_first_come_first_served(
    db: Session,
) -> None:
    market = Market(db)
    assert market.post(10_000_000).voucher == 3_000_000  # cap ¥3 of a ¥5 share
    assert market.post(2_000_000).reason == billing.CAP_EXHAUSTED
    with transaction(db):
        others = [market.world.enterprise(uscc(10 + i), POLICY) for i in range(3)]
    parts = [market.post(6_000_000, ent=ent).voucher for ent in others]
    assert parts == [3_000_000, 3_000_000, 1_000_000]  # the pool of ¥10 is spent
    assert market.post(6_000_000, ent=market.both).reason == billing.POOL_EXHAUSTED
    status = market.run(lambda db: billing.pool_status(db, POLICY))
    assert (status["granted"], status["used"], status["remaining"]) == (10_000_000, 10_000_000, 0)
    assert status["companies"] == 5
    assert billing.check_invariants(db) == []


def test_one_entitlement_per_uscc_even_across_enterprise_ids(db: Session) -> None:
    market = Market(db)
    market.run(
        lambda db: billing.open_enterprise_accounts(db, "ent-alias", uscc(1), POLICY, SEP_21)
    )
    assert market.post(10_000_000).voucher == 3_000_000
    with transaction(db):
        job, lease = market.world.job(market.ent, market.prov)
        digest = market.world.receipt(lease)
        alias = billing.post_usage(
            db,
            enterprise_id="ent-alias",
            provider_id=market.prov,
            enterprise_uscc=uscc(1),
            provider_uscc=uscc(3),
            lease_id=lease,
            job_id=job,
            receipt_digest=digest,
            amount=1_000,
            policy=POLICY,
            now_ms=SEP_21,
        )
    assert (alias.voucher, alias.reason) == (0, billing.CAP_EXHAUSTED)
    with pytest.raises(billing.IdempotencyConflict, match="already has its entitlement"):
        market.run(
            lambda db: billing.open_enterprise_accounts(db, "ent-alias", uscc(4), POLICY, SEP_21)
        )


def test_no_subsidy_for_paying_yourself_and_providers_as_the_policy_says(
    db: Session,
) -> None:
    market = Market(db)
    own = market.post(1_000, ent=market.both, prov=market.both_provider)
    assert (own.voucher, own.reason) == (0, billing.SELF_DEALING)
    assert market.post(1_000, ent=market.both).voucher == 500
    market.policy = strict = VoucherPolicy(
        **{**POLICY.__dict__, "providers_may_be_subsidised": False}
    )
    refused = market.post(1_000, ent=market.both)
    assert (refused.voucher, refused.reason) == (0, billing.NOT_ELIGIBLE)
    assert market.post(1_000).voucher == 500
    account = market.run(lambda db: billing.enterprise_account(db, market.both, strict, SEP_21))
    assert (
        account["voucher"]["eligible"] is False and account["voucher"]["remaining_micro_yuan"] == 0
    )


def test_each_fiscal_year_has_its_own_pool_and_caps(db: Session) -> None:
    market = Market(db)
    jan_2027 = 1_798_761_600_000
    assert billing.period_of(jan_2027) == "2027-01"
    late = market.post(1_000, now=jan_2027)
    assert (late.voucher, late.reason, late.fiscal_year) == (0, billing.OUTSIDE_FISCAL_YEAR, 2027)
    market.policy = VoucherPolicy(**{**POLICY.__dict__, "fiscal_year": 2027})
    fresh = market.post(1_000, now=jan_2027 + 1)
    assert (fresh.voucher, fresh.fiscal_year) == (500, 2027)
    assert billing.get_account(db, names.pool_account(2027)) is not None and billing.get_account(
        db, names.cap_account(2027, uscc(1))
    )
    assert market.run(lambda db: billing.pool_status(db, market.policy))["used"] == 500
    assert billing.check_invariants(db) == []


def test_a_larger_policy_tops_the_pool_up_and_a_smaller_takes_nothing_back(
    db: Session,
) -> None:
    market = Market(db)
    market.policy = VoucherPolicy(
        **{
            **POLICY.__dict__,
            "pool_total_micro_yuan": 20_000_000,
            "per_company_cap_micro_yuan": 4_000_000,
        }
    )
    assert market.post(10_000_000).voucher == 4_000_000
    market.policy = POLICY
    assert market.post(10_000_000).voucher == 0
    status = market.run(lambda db: billing.pool_status(db, POLICY))
    assert (status["granted"], status["used"]) == (20_000_000, 4_000_000)
    assert billing.check_invariants(db) == []


def test_use_first_pay_later_within_the_credit_limit(db: Session) -> None:
    market = Market(db)
    reservation = market.run(
        lambda db: billing.reserve_job(
            db, "job-r", market.ent, 30_000_000, policy=POLICY, now_ms=SEP_21
        )
    )
    assert (reservation.voucher_estimate, reservation.amount) == (3_000_000, 27_000_000)
    with transaction(db):
        db.conn.execute(
            "INSERT INTO jobs (id, enterprise_id, idempotency_key, spec, state, "
            "created_at_ms) VALUES ('job-r', ?, 'r', '{}', 'running', 0)",
            [market.ent],
        )
        db.conn.execute(
            "INSERT INTO leases (id, job_id, agent_id, gpu_uuids, price_per_gpu_hour, "
            "created_at_ms, start_deadline_ms, ends_at_ms, state) VALUES "
            "('lease-r', 'job-r', ?, '[]', 1, 0, 0, 0, 'running')",
            [f"agent-{market.prov}"],
        )
    with pytest.raises(
        billing.CreditExceeded, match="limit ¥50.00, owed ¥0.00, reserved for jobs ¥27.00"
    ):
        market.run(
            lambda db: billing.reserve_job(
                db, "job-s", market.ent, 30_000_000, policy=POLICY, now_ms=SEP_21
            )
        )
    posting = market.post(4_000_000, job="job-r")
    account = market.run(lambda db: billing.enterprise_account(db, market.ent, POLICY, SEP_21))
    assert account["reserved_micro_yuan"] == 27_000_000 - posting.deferred
    assert account["deferred_balance_micro_yuan"] == posting.deferred
    assert account["headroom_micro_yuan"] == 50_000_000 - 27_000_000
    settled = market.run(lambda db: billing.settle_job(db, "job-r", SEP_21))
    assert settled.remaining == 0
    assert market.run(lambda db: billing.settle_job(db, "job-r", SEP_21)) == settled
    with pytest.raises(billing.CreditExceeded, match="deferred part"):
        market.post(200_000_000)
    with pytest.raises(billing.CreditExceeded, match="cannot be lowered"):
        market.run(lambda db: billing.set_credit_limit(db, market.ent, 1_000_000, SEP_21))
    assert (
        market.run(lambda db: billing.set_credit_limit(db, market.ent, 2_000_000, SEP_21))
        == 2_000_000
    )
    with pytest.raises(billing.Overpayment, match="more than the ¥2.00"):
        market.run(lambda db: billing.record_payment(db, market.ent, 2_000_001, "bank-9", SEP_21))
    first = market.run(
        lambda db: billing.record_payment(db, market.ent, 2_000_000, "bank-9", SEP_21)
    )
    assert (
        market.run(
            lambda db: billing.record_payment(db, market.ent, 2_000_000, "bank-9", SEP_21 + 9)
        )
        == first
    )
    with pytest.raises(billing.IdempotencyConflict, match="payment 'bank-9' was already recorded"):
        market.run(lambda db: billing.record_payment(db, market.both, 2_000_000, "bank-9", SEP_21))
    assert billing.check_invariants(db) == []


def test_providers_earn_both_parts_and_are_never_paid_more(db: Session) -> None:
    market = Market(db)
    market.post(1_000_000)
    earnings = market.run(lambda db: billing.provider_earnings(db, market.prov))
    assert (
        earnings["earned_micro_yuan"],
        earnings["voucher_micro_yuan"],
        earnings["deferred_micro_yuan"],
    ) == (1_000_000, 500_000, 500_000)
    market.run(lambda db: billing.record_payout(db, market.prov, 600_000, "wire-1", SEP_21))
    with pytest.raises(billing.LedgerError, match="more than the ¥0.40"):
        market.run(lambda db: billing.record_payout(db, market.prov, 400_001, "wire-2", SEP_21))
    assert (
        market.run(lambda db: billing.provider_earnings(db, market.prov))["balance_micro_yuan"]
        == 400_000
    )
    assert billing.check_invariants(db) == []


def test_bad_input_is_refused_with_a_sentence(db: Session) -> None:
    market = Market(db)
    with pytest.raises(SuanliError, match="check character"):
        market.run(
            lambda db: billing.open_enterprise_accounts(
                db, "ent-z", "91330000100000001X", POLICY, SEP_21
            )
        )
    with pytest.raises(billing.InvalidTransfer, match="micro-yuan"):
        market.post(-1)
    with pytest.raises(billing.InvalidTransfer, match="micro-yuan"):
        market.post(billing.MAX_AMOUNT + 1)
    with pytest.raises(billing.UnknownEnterprise):
        market.run(lambda db: billing.record_payment(db, "ent-nobody", 1, "ref", SEP_21))
    with pytest.raises(billing.InvalidTransfer, match="reference"):
        market.run(lambda db: billing.record_payment(db, market.ent, 1, "", SEP_21))
    assert billing.check_invariants(db) == []


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("provider_uscc", "is registered under USCC"),  # a caller cannot hide self-dealing
        ("enterprise_uscc", "entitlement is under USCC"),  # nor switch to another company's cap
    ],
)
def test_usccs_must_be_the_registered_ones(db: Session, field: str, message: str) -> None:
    market = Market(db)
    with transaction(db):
        job, lease = market.world.job(market.both, market.both_provider)
        digest = market.world.receipt(lease)
    fields = {"enterprise_uscc": uscc(2), "provider_uscc": uscc(2), field: uscc(3)}
    with pytest.raises(billing.IdempotencyConflict, match=message):
        market.run(
            lambda db: billing.post_usage(
                db,
                enterprise_id=market.both,
                provider_id=market.both_provider,
                lease_id=lease,
                job_id=job,
                receipt_digest=digest,
                amount=1_000,
                policy=POLICY,
                now_ms=SEP_21,
                **fields,
            )
        )


# -- reservations: every accepted job is payable to its maximum cost --------------------------


def _reserve(
    market: Market, job: str, ent: str, max_cost: int, now: int = SEP_21
) -> billing.Reservation:
    return market.run(
        lambda db: billing.reserve_job(db, job, ent, max_cost, policy=market.policy, now_ms=now)
    )


def _job(market: Market, ent: str, prov: str) -> str:
    with transaction(market.db):
        job, _ = market.world.job(ent, prov)
    return job


def test_a_reservation_holds_the_voucher_share_on_cap_and_pool_and_the_rest_on_credit(
    db: Session,
) -> None:
    market = Market(db)
    job = _job(market, market.ent, market.prov)
    held = _reserve(market, job, market.ent, 4_000_000)
    assert (held.voucher_estimate, held.amount, held.voucher_remaining, held.held) == (
        2_000_000,
        2_000_000,
        2_000_000,
        4_000_000,
    )
    cap = billing.get_account(db, names.cap_account(2026, uscc(1)))
    pool = billing.get_account(db, names.pool_account(2026))
    assert cap is not None and pool is not None
    assert (cap.debits_pending, pool.debits_pending) == (2_000_000, 2_000_000)
    # a second job finds only the cap's unheld ¥1 to count on
    other = _reserve(market, _job(market, market.ent, market.prov), market.ent, 4_000_000)
    assert (other.voucher_estimate, other.amount) == (1_000_000, 3_000_000)
    assert (
        market.run(lambda db: billing.enterprise_account(db, market.ent, POLICY, SEP_21))[
            "voucher"
        ]["remaining_micro_yuan"]
        == 0
    )
    # usage draws the holds down; settling voids the rest, on every account
    posting = market.post(3_000_000, job=job)
    assert (posting.voucher, posting.deferred) == (1_500_000, 1_500_000)
    left = market.run(lambda db: billing.load_reservation(db, job))
    assert (left.remaining, left.voucher_remaining) == (500_000, 500_000)
    settled = market.run(lambda db: billing.settle_job(db, job, SEP_21))
    assert settled.held == 0
    cap = billing.get_account(db, names.cap_account(2026, uscc(1)))
    assert cap is not None and (cap.debits_posted, cap.debits_pending) == (1_500_000, 1_000_000)
    assert billing.check_invariants(db) == []


def test_rounding_each_receipt_down_never_strands_usage_within_the_maximum(
    db: Session,
) -> None:
    """1 µ¥ receipts have no voucher share of their own; the job's voucher hold takes what its
    credit hold cannot, so all of its maximum is paid with no free credit at all."""
    market = Market(db)
    market.run(lambda db: billing.set_credit_limit(db, market.ent, 501, SEP_21))
    with transaction(db):
        job, lease = market.world.job(market.ent, market.prov)
    held = _reserve(market, job, market.ent, 1_001)
    assert (held.voucher_estimate, held.amount) == (500, 501)
    with transaction(db):
        usages = [
            billing.Usage(
                market.ent,
                market.prov,
                uscc(1),
                uscc(3),
                lease,
                job,
                market.world.receipt(lease),
                1,
            )
            for _ in range(1_001)
        ]
        results = billing.post_usages(db, usages, policy=POLICY, now_ms=SEP_21)
    assert all(isinstance(r, billing.Posting) for r in results), [
        r for r in results if not isinstance(r, billing.Posting)
    ][:1]
    assert sum(r.voucher for r in results) == 500  # type: ignore[union-attr]
    assert market.run(lambda db: billing.load_reservation(db, job)).held == 0
    with pytest.raises(billing.CreditExceeded):  # beyond the maximum, credit truly cannot cover
        market.post(1, job=job)
    assert billing.check_invariants(db) == []


def test_a_company_that_also_provides_holds_its_whole_maximum_on_credit(
    db: Session,
) -> None:
    """Self-dealing, first case: the enterprise's company is a provider when the job is
    accepted, so its own agents may win it and no voucher would pay: nothing is counted on."""
    market = Market(db)
    market.run(lambda db: billing.set_credit_limit(db, market.both, 4_000_000, SEP_21))
    own = _job(market, market.both, market.both_provider)
    held = _reserve(market, own, market.both, 4_000_000)
    assert (held.voucher_estimate, held.amount, held.voucher_remaining) == (0, 4_000_000, 0)
    with pytest.raises(billing.CreditExceeded, match="the company also provides compute"):
        _reserve(market, _job(market, market.both, market.prov), market.both, 1)
    # won by its own agents: no voucher money, and the whole maximum is still paid
    posting = market.post(4_000_000, ent=market.both, prov=market.both_provider, job=own)
    assert (posting.voucher, posting.deferred, posting.reason) == (
        0,
        4_000_000,
        billing.SELF_DEALING,
    )
    assert billing.pool_status(db, POLICY)["used"] == 0
    assert billing.check_invariants(db) == []


def test_a_company_that_also_provides_still_gets_vouchers_from_others(
    db: Session,
) -> None:
    market = Market(db)
    job = _job(market, market.both, market.prov)
    assert _reserve(market, job, market.both, 4_000_000).voucher_estimate == 0
    posting = market.post(4_000_000, ent=market.both, job=job)
    assert (posting.voucher, posting.deferred, posting.reason) == (
        2_000_000,
        2_000_000,
        billing.COVERED,
    )
    assert billing.check_invariants(db) == []


def test_becoming_a_provider_moves_open_voucher_holds_to_credit(db: Session) -> None:
    """Self-dealing, second case: the company registers as a provider while its job is open."""
    from coordinator import accounts

    market = Market(db)
    job = _job(market, market.ent, market.prov)
    held = _reserve(market, job, market.ent, 4_000_000)
    assert held.voucher_remaining == 2_000_000
    provider_id, _ = market.run(lambda db: accounts.add_provider(db, "Own DC", uscc(1), SEP_21))
    moved = market.run(lambda db: billing.load_reservation(db, job))
    assert (moved.voucher_remaining, moved.cover, moved.remaining) == (0, 2_000_000, 4_000_000)
    cap = billing.get_account(db, names.cap_account(2026, uscc(1)))
    assert cap is not None and cap.debits_pending == 0
    assert billing.pool_status(db, POLICY)["remaining"] == POLICY.pool_total_micro_yuan
    # its own agent wins it: paid in full from credit, no voucher
    market.run(
        lambda db: billing.set_credit_limit(db, market.ent, 4_000_000, SEP_21)
    )  # nothing free
    posting = market.post(4_000_000, prov=provider_id, job=job)
    assert (posting.voucher, posting.deferred, posting.reason) == (
        0,
        4_000_000,
        billing.SELF_DEALING,
    )
    assert market.run(lambda db: billing.load_reservation(db, job)).held == 0
    assert market.run(lambda db: billing.cover_self_dealing(db, uscc(1), SEP_21)) == []
    assert billing.check_invariants(db) == []


def test_becoming_a_provider_is_refused_when_credit_cannot_take_the_voucher_holds(
    db: Session,
) -> None:
    from coordinator import accounts

    market = Market(db)
    market.run(lambda db: billing.set_credit_limit(db, market.ent, 2_000_000, SEP_21))
    job = _job(market, market.ent, market.prov)
    assert _reserve(market, job, market.ent, 4_000_000).amount == 2_000_000
    before = db.conn.execute("SELECT COUNT(*) FROM providers").fetchone()[0]
    with pytest.raises(billing.CreditExceeded, match=f"company {uscc(1)} is becoming a provider"):
        market.run(lambda db: accounts.add_provider(db, "Own DC", uscc(1), SEP_21))
    assert db.conn.execute("SELECT COUNT(*) FROM providers").fetchone()[0] == before
    assert market.run(lambda db: billing.load_reservation(db, job)).voucher_remaining == 2_000_000
    assert billing.check_invariants(db) == []


def test_voucher_money_held_in_one_year_pays_the_job_after_the_year_ends(
    db: Session,
) -> None:
    market = Market(db)
    market.run(lambda db: billing.set_credit_limit(db, market.ent, 2_000_000, SEP_21))
    job = _job(market, market.ent, market.prov)
    _reserve(market, job, market.ent, 4_000_000)
    jan_2027 = 1_798_761_600_000
    posting = market.post(4_000_000, now=jan_2027, job=job)
    assert (posting.voucher, posting.fiscal_year, posting.period) == (2_000_000, 2026, "2027-01")
    unreserved = market.post(1_000, now=jan_2027, ent=market.both)
    assert (unreserved.voucher, unreserved.reason) == (0, billing.OUTSIDE_FISCAL_YEAR)
    assert billing.check_invariants(db) == []


def test_check_invariants_finds_a_reservation_that_cannot_pay(db: Session) -> None:
    market = Market(db)
    job = _job(market, market.ent, market.prov)
    _reserve(market, job, market.ent, 4_000_000)
    drop_refusals(db, "ledger_reservations")
    db.conn.execute("UPDATE ledger_reservations SET max_cost = max_cost + 1")
    assert any("reservation holds only" in p for p in billing.check_invariants(db))


def test_check_invariants_finds_held_voucher_money_that_went_astray(
    db: Session,
) -> None:
    market = Market(db)
    job = _job(market, market.ent, market.prov)
    _reserve(market, job, market.ent, 4_000_000)
    posting = market.post(1_000_000, job=job)
    codes = [t.code for t in billing.transfers_for_receipt(db, posting.receipt_digest)]
    assert codes == [
        names.USAGE_POOL,
        names.USAGE_VOUCHER,
        names.USAGE_CAP,
        names.USAGE_DEFERRED,
        names.USAGE_CREDIT,
    ]
    assert billing.check_invariants(db) == []
    drop_refusals(db, "ledger_transfers")
    db.conn.execute(
        "UPDATE ledger_transfers SET credit_account = 'bank' WHERE code = ?", [names.USAGE_VOUCHER]
    )
    problems = billing.check_invariants(db)
    assert any("stray transfer usage_voucher" in p for p in problems), problems
    assert any(
        "pays 0 µ¥ of vouchers out of pool_held:2026 but draws 500000 µ¥" in p for p in problems
    ), problems
