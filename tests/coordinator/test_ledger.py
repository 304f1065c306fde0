"""The ledger: balanced immutable transfers, balance limits, two-phase reservations, idempotent
retries, and a stateful model of vouchers and deferred payment that restarts the database file
between any two steps and still finds every invariant holding."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from databases import ENGINES, disable_foreign_keys, drop_refusals, new_database
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from ledger_world import DAY, NOW, World, uscc

from coordinator import billing
from coordinator.billing import Transfer, check_invariants, create_transfers, transfer_id
from coordinator.billing.periods import utc
from coordinator.storage import Database, IntegrityError, Session, begin, connect, transaction
from shared import ledger_names as names


@pytest.fixture
def db(database_location: str) -> Iterator[Session]:
    database = connect(database_location)
    yield database
    database.conn.close()


POLICY = billing.VoucherPolicy(
    fiscal_year=2026,
    pool_total_micro_yuan=10_000_000_000,
    per_company_cap_micro_yuan=1_000_000_000,
    default_credit_limit_micro_yuan=2_000_000_000,
)


def _accounts(db: Session) -> None:
    for account_id, flags in (
        ("a", names.NO_LIMIT),
        ("b", names.DEBITS_MUST_NOT_EXCEED_CREDITS),
        ("c", names.CREDITS_MUST_NOT_EXCEED_DEBITS),
    ):
        billing.open_account(db, account_id, ledger=names.CNY, kind="test", flags=flags, now_ms=NOW)
    billing.open_account(db, "q", ledger=names.CREDIT, kind="test", now_ms=NOW)


def _t(cause: str, debit: str, credit: str, amount: int, **kw: Any) -> Transfer:
    return Transfer(
        transfer_id(cause, kw.pop("leg", "leg")),
        debit,
        credit,
        amount,
        "test",
        cause,
        at_ms=NOW,
        **kw,
    )


# -- the transfer engine ---------------------------------------------------------------------


def test_a_retry_is_a_no_op_and_a_changed_retry_is_refused(db: Session) -> None:
    with transaction(db):
        _accounts(db)
        first = create_transfers(db, [_t("x", "a", "b", 10)])
        again = create_transfers(
            db, [Transfer(first[0].id, "a", "b", 10, "test", "x", at_ms=NOW + 5)]
        )
        assert again == first
        with pytest.raises(billing.IdempotencyConflict, match="different amount"):
            create_transfers(db, [_t("x", "a", "b", 11)])
    assert db.conn.execute("SELECT COUNT(*) FROM ledger_transfers").fetchone()[0] == 1
    assert billing.get_account(db, "b").credits_posted == 10  # type: ignore[union-attr]
    assert check_invariants(db) == []


def test_transfer_ids_come_from_their_cause() -> None:
    assert transfer_id("receipt:ab", "voucher") == transfer_id("receipt:ab", "voucher")
    assert (
        len(
            {
                transfer_id("receipt:ab", "voucher"),
                transfer_id("receipt:ab", "deferred"),
                transfer_id("receipt:ac", "voucher"),
            }
        )
        == 3
    )


def test_a_linked_set_is_written_whole_or_not_at_all(db: Session) -> None:
    with transaction(db):
        _accounts(db)
        create_transfers(db, [_t("fund", "a", "b", 100)])
        with pytest.raises(billing.LimitExceeded) as caught:
            create_transfers(db, [_t("s", "b", "a", 60, leg="1"), _t("s", "b", "a", 60, leg="2")])
        assert caught.value.account == "b"
    assert billing.get_account(db, "b").debits_posted == 0  # type: ignore[union-attr]
    assert db.conn.execute("SELECT COUNT(*) FROM ledger_transfers").fetchone()[0] == 1
    assert check_invariants(db) == []


def test_limits_count_pending_debits_and_refuse_overpaying(db: Session) -> None:
    with transaction(db):
        _accounts(db)
        create_transfers(db, [_t("fund", "a", "b", 100)])
        create_transfers(db, [_t("hold", "b", "a", 70, kind=names.PENDING)])
        with pytest.raises(billing.LimitExceeded, match="exceed its credits"):
            create_transfers(db, [_t("spend", "b", "a", 31)])
        create_transfers(db, [_t("spend", "b", "a", 30)])
        # c may never be credited more than it was debited
        with pytest.raises(billing.LimitExceeded, match="exceed its debits"):
            create_transfers(db, [_t("pay", "a", "c", 1)])
    assert check_invariants(db) == []


def test_pending_transfers_are_drawn_down_then_voided(db: Session) -> None:
    with transaction(db):
        _accounts(db)
        create_transfers(db, [_t("fund", "a", "b", 100)])
        (hold,) = create_transfers(db, [_t("hold", "b", "a", 50, kind=names.PENDING)])
        create_transfers(
            db, [_t("use", "b", "a", 20, leg="1", kind=names.POST_PENDING, pending_id=hold.id)]
        )
        create_transfers(
            db, [_t("use", "b", "a", 10, leg="2", kind=names.POST_PENDING, pending_id=hold.id)]
        )
        assert billing.pending_remaining(db, hold.id) == 20
        with pytest.raises(billing.PendingError, match="holds only 20"):
            create_transfers(
                db, [_t("use", "b", "a", 21, leg="3", kind=names.POST_PENDING, pending_id=hold.id)]
            )
        with pytest.raises(billing.PendingError, match="whole remainder"):
            create_transfers(
                db, [_t("end", "b", "a", 5, kind=names.VOID_PENDING, pending_id=hold.id)]
            )
        with pytest.raises(billing.PendingError, match="same accounts"):
            create_transfers(
                db, [_t("end", "a", "b", 20, kind=names.VOID_PENDING, pending_id=hold.id)]
            )
        create_transfers(db, [_t("end", "b", "a", 20, kind=names.VOID_PENDING, pending_id=hold.id)])
        with pytest.raises(billing.PendingError):
            create_transfers(
                db, [_t("late", "b", "a", 1, kind=names.POST_PENDING, pending_id=hold.id)]
            )
    b = billing.get_account(db, "b")
    assert b is not None and (b.debits_posted, b.debits_pending) == (30, 0)
    assert check_invariants(db) == []


@pytest.mark.parametrize(
    ("debit", "credit", "amount", "error"),
    [
        ("a", "q", 1, "cross ledgers"),
        ("a", "a", 1, "same account"),
        ("a", "b", 0, "positive integer"),
        ("a", "b", -5, "positive integer"),
        ("a", "b", True, "positive integer"),
        ("a", "b", 2**63, "positive integer"),
        ("a", "nowhere", 1, "does not exist"),
    ],
)
def test_malformed_transfers_are_refused(
    db: Session, debit: str, credit: str, amount: Any, error: str
) -> None:
    with transaction(db):
        _accounts(db)
        with pytest.raises(billing.LedgerError, match=error):
            create_transfers(db, [_t("bad", debit, credit, amount)])


def test_usage_codes_must_name_a_receipt_and_only_they_may(db: Session) -> None:
    with transaction(db):
        _accounts(db)
        with pytest.raises(billing.InvalidTransfer, match="receipt digest"):
            create_transfers(
                db, [Transfer(transfer_id("u", "l"), "a", "b", 1, names.USAGE_VOUCHER, "u")]
            )
        with pytest.raises(billing.InvalidTransfer, match="receipt digest"):
            create_transfers(
                db,
                [
                    Transfer(
                        transfer_id("u", "l"), "a", "b", 1, "test", "u", receipt_digest=b"x" * 32
                    )
                ],
            )


# -- tampering -------------------------------------------------------------------------------


@pytest.fixture
def posted(db: Session) -> tuple[Session, billing.Posting]:
    world = World(db)
    with transaction(db):
        ent = world.enterprise(uscc(1), POLICY)
        prov = world.provider(uscc(2))
        job, lease = world.job(ent, prov)
        billing.reserve_job(db, job, ent, 400_000_000, policy=POLICY, now_ms=NOW)
        digest = world.receipt(lease)
        posting = billing.post_usage(
            db,
            enterprise_id=ent,
            provider_id=prov,
            enterprise_uscc=uscc(1),
            provider_uscc=uscc(2),
            lease_id=lease,
            job_id=job,
            receipt_digest=digest,
            amount=300_000_000,
            policy=POLICY,
            now_ms=NOW,
        )
    assert check_invariants(db) == []
    return db, posting


def test_the_database_refuses_to_update_or_delete_a_transfer(
    posted: tuple[Session, billing.Posting],
) -> None:
    db, _ = posted
    with pytest.raises(IntegrityError, match="immutable"):
        db.conn.execute("UPDATE ledger_transfers SET amount = amount + 1")
    with pytest.raises(IntegrityError, match="immutable"):
        db.conn.execute("DELETE FROM ledger_transfers")
    with pytest.raises(IntegrityError, match="immutable"):
        db.conn.execute("DELETE FROM ledger_postings")
    with pytest.raises(IntegrityError, match="keeps its id"):
        db.conn.execute("UPDATE ledger_accounts SET flags = '' WHERE kind = 'pool'")
    if db.engine == "postgresql":  # SQLite has no TRUNCATE; PostgreSQL's skips row triggers
        for table in ("ledger_transfers", "ledger_postings", "ledger_accounts"):
            with pytest.raises(IntegrityError, match="immutable|never deleted"):
                db.conn.execute(f"TRUNCATE {table} CASCADE")
    assert check_invariants(db) == []


def test_an_edited_balance_is_caught(posted: tuple[Session, billing.Posting]) -> None:
    db, _ = posted
    db.conn.execute(
        "UPDATE ledger_accounts SET credits_posted = credits_posted + 1 WHERE id = 'pool:2026'"
    )
    problems = check_invariants(db)
    assert any("pool:2026 stores credits_posted" in p for p in problems)
    assert any("ledger cny: posted debits" in p for p in problems)


def test_a_raised_limit_is_caught(posted: tuple[Session, billing.Posting]) -> None:
    db, posting = posted
    # spend the enterprise's credit behind the ledger's back, keeping balances consistent
    credit = names.credit_account(posting.enterprise_id)
    disable_foreign_keys(db)
    db.conn.execute(
        "INSERT INTO ledger_transfers (id, kind, debit_account, credit_account, amount, code, "
        "cause, at_ms) VALUES (?, 'posted', ?, 'credit_used', ?, 'forged', 'forged', 0)",
        [b"f" * 32, credit, 10**12],
    )
    db.conn.execute(
        "UPDATE ledger_accounts SET debits_posted = debits_posted + ? WHERE id = ?",
        [10**12, credit],
    )
    db.conn.execute(
        "UPDATE ledger_accounts SET credits_posted = credits_posted + ? WHERE id = ?",
        [10**12, names.CREDIT_USED],
    )
    problems = check_invariants(db)
    assert any(f"account {credit} is past its limit" in p for p in problems)
    assert any("of credit unused" in p for p in problems)


def test_usage_naming_no_accepted_receipt_is_caught(
    posted: tuple[Session, billing.Posting],
) -> None:
    db, posting = posted
    disable_foreign_keys(db)
    db.conn.execute("DELETE FROM receipts WHERE digest = ?", [posting.receipt_digest])
    problems = check_invariants(db)
    assert any("not an accepted receipt" in p for p in problems)
    assert any("names no accepted receipt" in p for p in problems)


def test_a_forged_usage_transfer_is_caught(
    posted: tuple[Session, billing.Posting],
) -> None:
    db, posting = posted
    disable_foreign_keys(db)
    earnings = names.earnings_account(posting.provider_id)
    db.conn.execute(
        "INSERT INTO ledger_transfers (id, kind, debit_account, credit_account, amount, code, "
        "cause, receipt_digest, at_ms) "
        "VALUES (?, 'posted', 'pool:2026', ?, 5, 'usage_voucher', 'x', ?, 0)",
        [b"g" * 32, earnings, b"no such receipt"],
    )
    db.conn.execute(
        "UPDATE ledger_accounts SET debits_posted = debits_posted + 5 WHERE id = 'pool:2026'"
    )
    db.conn.execute(
        "UPDATE ledger_accounts SET credits_posted = credits_posted + 5 WHERE id = ?", [earnings]
    )
    problems = check_invariants(db)
    assert any("not an accepted receipt" in p for p in problems)
    assert any("has no posting" in p for p in problems)
    assert any("caps of 2026 record" in p for p in problems)


def test_a_posting_that_disagrees_with_its_transfers_is_caught(
    posted: tuple[Session, billing.Posting],
) -> None:
    db, _ = posted
    drop_refusals(db, "ledger_postings")
    db.conn.execute("UPDATE ledger_postings SET voucher = voucher + 1, deferred = deferred - 1")
    assert any("its transfers move" in p for p in check_invariants(db))


# -- the writer thread ----------------------------------------------------------------------


async def test_postings_run_on_the_writer_thread_and_a_failure_rolls_back_only_itself(
    database_location: str,
) -> None:
    database = Database(database_location)
    world = World(database.db)
    with transaction(database.db):
        ent = world.enterprise(uscc(1), POLICY)
        prov = world.provider(uscc(2))
        job, lease = world.job(ent, prov)
        digests = [world.receipt(lease) for _ in range(3)]
    database.start()
    try:

        def post(digest: bytes, amount: int) -> Callable[[Session], billing.Posting]:
            return lambda db: billing.post_usage(
                db,
                enterprise_id=ent,
                provider_id=prov,
                enterprise_uscc=uscc(1),
                provider_uscc=uscc(2),
                lease_id=lease,
                job_id=job,
                receipt_digest=digest,
                amount=amount,
                policy=POLICY,
                now_ms=NOW,
            )

        results = await asyncio.gather(
            database.run(post(digests[0], 1_000_000)),
            database.run(post(digests[1], 10**15)),  # far past the credit limit
            database.run(post(digests[2], 2_000_000)),
            return_exceptions=True,
        )
        assert isinstance(results[1], billing.CreditExceeded)
        assert [r.voucher for r in (results[0], results[2])] == [500_000, 1_000_000]  # type: ignore[union-attr]
        assert await database.run(check_invariants) == []
        assert await database.run(lambda db: billing.job_charges(db, job)) == {
            "charged_micro_yuan": 3_000_000,
            "voucher_micro_yuan": 1_500_000,
            "deferred_micro_yuan": 1_500_000,
        }
    finally:
        database.close()


# -- the stateful model ----------------------------------------------------------------------

START = 1_788_220_800_000  # 2026-09-01T00:00Z; a run may cross into fiscal year 2027
AMOUNTS = st.one_of(
    st.integers(1, 10),
    st.integers(1, 2_000_000_000),
    st.integers(2_000_000_000, 6_000_000_000),
    st.just(billing.MAX_AMOUNT),
)


class LedgerMachine(RuleBasedStateMachine):
    """Companies, jobs, receipts, payments and period closes against a model of what they owe."""

    engine = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="suanli-ledger-"))
        self.path = new_database(self.engine, self.dir)
        self.db = connect(self.path)
        self.world = World(self.db)
        self.now = START
        self.policy = POLICY
        self.enterprises: dict[str, str] = {}  # id -> uscc
        self.providers: dict[str, str] = {}
        self.jobs: dict[str, tuple[str, str, str]] = {}  # job -> (enterprise, provider, lease)
        self.pool_used = 0
        self.cap_used: dict[str, int] = {}
        self.owed: dict[str, int] = {}
        self.limit: dict[str, int] = {}
        self.reserved: dict[str, int] = {}  # job -> remaining credit hold
        self.covered: dict[str, int] = {}  # job -> remaining self-dealing cover (credit)
        self.voucher_held: dict[str, int] = {}  # job -> remaining voucher hold (cap and pool)
        self.max_cost: dict[str, int] = {}  # job -> maximum cost, while its reservation is open
        self.charged: dict[str, int] = {}  # job -> what its postings charged
        self.postings: dict[bytes, tuple[dict[str, Any], billing.Posting]] = {}
        self.payments: dict[str, tuple[str, int]] = {}
        self.paid: dict[str, int] = {}
        self.usage: dict[tuple[str, str], int] = {}  # (period, enterprise) -> deferred
        self.statements: dict[str, list[tuple[str, int, int]]] = {}  # ent -> (period, due, suspend)
        self.closed: set[str] = set()
        self.companies = 0

    def teardown(self) -> None:
        self.db.conn.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # the writer's way: one transaction that commits even when a call raised, so every
    # function must undo its own partial work
    def call(self, fn: Callable[[Session], Any]) -> Any:
        begin(self.db)
        try:
            return fn(self.db)
        except billing.LedgerError as exc:
            return exc
        finally:
            self.db.conn.execute("COMMIT")

    @initialize(
        coverage=st.sampled_from([0, 1, 5_000, 7_777, 10_000]),
        subsidise=st.booleans(),
        both=st.lists(st.booleans(), min_size=1, max_size=3),
    )
    def set_up(self, coverage: int, subsidise: bool, both: list[bool]) -> None:
        """A policy, a few enterprises (some of them providers too) and one more provider."""
        self.policy = billing.VoucherPolicy(
            fiscal_year=2026,
            pool_total_micro_yuan=5_000_000_000,
            per_company_cap_micro_yuan=3_000_000_000,
            coverage_bps=coverage,
            providers_may_be_subsidised=subsidise,
            payment_terms_days=10,
            grace_days=5,
            default_credit_limit_micro_yuan=8_000_000_000,
        )
        for also_provider in [False, *both]:
            self.register_enterprise(also_provider)
        self.register_provider()
        for ent in sorted(self.enterprises):
            for prov in sorted(self.providers):
                with transaction(self.db):
                    job, lease = self.world.job(ent, prov, self.now)
                self.jobs[job] = (ent, prov, lease)

    # -- model helpers
    def headroom(self, ent: str) -> int:
        return self.limit[ent] - self.owed[ent] - self.credit_held(ent)

    def credit_held(self, ent: str) -> int:
        return sum(
            self.reserved.get(job, 0) + self.covered.get(job, 0)
            for job in self.jobs
            if self.jobs[job][0] == ent
        )

    def cap_held(self, code: str) -> int:
        return sum(
            held
            for job, held in self.voucher_held.items()
            if self.enterprises[self.jobs[job][0]] == code
        )

    def cap_free(self, code: str) -> int:
        return (
            self.policy.per_company_cap_micro_yuan
            - self.cap_used.get(code, 0)
            - self.cap_held(code)
        )

    def pool_free(self) -> int:
        return self.policy.pool_total_micro_yuan - self.pool_used - sum(self.voucher_held.values())

    def subsidy_allowed(self, code: str) -> bool:
        return self.policy.providers_may_be_subsidised or code not in self.providers.values()

    def expected_split(self, ent: str, prov: str, amount: int, self_dealing: bool) -> billing.Split:
        if utc(self.now).year != 2026:
            return billing.Split(0, amount, billing.OUTSIDE_FISCAL_YEAR)
        code = self.enterprises[ent]
        return billing.split_charge(
            amount,
            self.policy.coverage_bps,
            self.cap_free(code),
            self.pool_free(),
            self_dealing,
            self.subsidy_allowed(code),
        )

    def expected_usage_split(
        self, job: str, ent: str, amount: int, self_dealing: bool
    ) -> billing.Split:
        """The split with the job's holds: its voucher hold first, and at least what its
        credit holds cannot cover (see billing.usage_legs.split_usage)."""
        held = self.voucher_held.get(job, 0)
        if held == 0 or self_dealing:
            return self.expected_split(ent, "", amount, self_dealing)
        code = self.enterprises[ent]
        free_cap = free_pool = 0
        if utc(self.now).year == 2026 and self.subsidy_allowed(code):
            free_cap, free_pool = self.cap_free(code), self.pool_free()
        share = amount * self.policy.coverage_bps // billing.BPS
        credit = self.reserved.get(job, 0) + self.covered.get(job, 0)
        ordinary = min(share, held + free_cap, held + free_pool)
        voucher = min(amount, max(ordinary, min(amount - credit, held)))
        reason = (
            billing.COVERED
            if voucher >= share
            else (billing.CAP_EXHAUSTED if free_cap <= free_pool else billing.POOL_EXHAUSTED)
        )
        return billing.Split(voucher, amount - voucher, reason)

    def suspended(self, ent: str) -> bool:
        unallocated = self.paid.get(ent, 0)
        for period, _, suspend in sorted(self.statements.get(ent, [])):
            due = self.usage.get((period, ent), 0)
            paid = min(unallocated, due)
            unallocated -= paid
            if due - paid and self.now > suspend:
                return True
        return False

    # -- rules
    @rule(also_provider=st.booleans())
    def register_enterprise(self, also_provider: bool) -> None:
        self.companies += 1
        code = uscc(self.companies)
        with transaction(self.db):
            ent = self.world.enterprise(code, self.policy, self.now)
            if also_provider:
                assert billing.cover_self_dealing(self.db, code, self.now) == []
                self.providers[self.world.provider(code, self.now)] = code
        self.enterprises[ent] = code
        self.owed[ent] = 0
        self.limit[ent] = self.policy.default_credit_limit_micro_yuan

    @rule()
    def register_provider(self) -> None:
        self.companies += 1
        code = uscc(self.companies)
        with transaction(self.db):
            self.providers[self.world.provider(code, self.now)] = code

    @precondition(lambda self: self.enterprises and self.providers)
    @rule(data=st.data(), max_cost=st.one_of(st.none(), AMOUNTS))
    def award_job(self, data: st.DataObject, max_cost: int | None) -> None:
        ent = data.draw(st.sampled_from(sorted(self.enterprises)))
        prov = data.draw(st.sampled_from(sorted(self.providers)))
        with transaction(self.db):
            job, lease = self.world.job(ent, prov, self.now)
        self.jobs[job] = (ent, prov, lease)
        if max_cost is None:
            return
        result = self.call(
            lambda db: billing.reserve_job(
                db, job, ent, max_cost, policy=self.policy, now_ms=self.now
            )
        )
        # a company that also provides compute may win its own job: no voucher is counted on
        own = self.enterprises[ent] in self.providers.values()
        estimate = 0 if own else self.expected_split(ent, prov, max_cost, False).voucher
        event(f"reservation: {type(result).__name__}")
        if self.suspended(ent):
            assert isinstance(result, billing.Suspended), result
            assert "suspended" in result.detail
        elif max_cost - estimate > self.headroom(ent):
            assert isinstance(result, billing.CreditExceeded), result
            assert "does not fit the credit" in result.detail
        else:
            assert isinstance(result, billing.Reservation), result
            assert (result.voucher_estimate, result.amount) == (estimate, max_cost - estimate)
            assert result.voucher_remaining == estimate and result.held == max_cost
            self.reserved[job] = result.amount
            self.voucher_held[job] = estimate
            self.max_cost[job] = max_cost
            again = self.call(
                lambda db: billing.reserve_job(
                    db, job, ent, max_cost, policy=self.policy, now_ms=self.now
                )
            )
            assert again == result

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), amount=AMOUNTS)
    def post_usage(self, data: st.DataObject, amount: int) -> None:
        self.post(data.draw(st.sampled_from(sorted(self.jobs))), amount)

    @precondition(
        lambda self: any(self.charged.get(job, 0) < most for job, most in self.max_cost.items())
    )
    @rule(data=st.data())
    def post_usage_within_the_maximum(self, data: st.DataObject) -> None:
        """Usage that the job's reservation promised to pay, in one piece or in many."""
        job = data.draw(
            st.sampled_from(
                sorted(
                    job for job, most in self.max_cost.items() if self.charged.get(job, 0) < most
                )
            )
        )
        left = self.max_cost[job] - self.charged.get(job, 0)
        self.post(
            job,
            data.draw(
                st.one_of(st.just(left), st.integers(1, left), st.integers(1, min(left, 10)))
            ),
        )

    @precondition(lambda self: self.enterprises and self.providers)
    @rule(data=st.data(), max_cost=st.integers(1, 3_000_000_000))
    def award_an_affordable_job(self, data: st.DataObject, max_cost: int) -> None:
        self.award_job(data, max_cost)

    def post(self, job: str, amount: int) -> None:
        ent, prov, lease = self.jobs[job]
        with transaction(self.db):
            digest = self.world.receipt(lease, self.now)
        fields: dict[str, Any] = {
            "enterprise_id": ent,
            "provider_id": prov,
            "enterprise_uscc": self.enterprises[ent],
            "provider_uscc": self.providers[prov],
            "lease_id": lease,
            "job_id": job,
            "receipt_digest": digest,
            "amount": amount,
        }
        result = self.call(
            lambda db: billing.post_usage(db, **fields, policy=self.policy, now_ms=self.now)
        )
        within = job in self.max_cost and self.charged.get(job, 0) + amount <= self.max_cost[job]
        if within:
            # the promise: usage within the job's maximum cost is never refused for credit
            assert isinstance(result, billing.Posting), result
            event("posted within the job's maximum")
        split = self.expected_usage_split(
            job, ent, amount, self.enterprises[ent] == self.providers[prov]
        )
        drawn = min(split.deferred, self.reserved.get(job, 0))
        drawn_cover = min(split.deferred - drawn, self.covered.get(job, 0))
        if split.deferred - drawn - drawn_cover > self.headroom(ent):
            assert isinstance(result, billing.CreditExceeded), result
            assert "does not fit the credit" in result.detail
            event("posting refused: credit exceeded")
            return
        assert isinstance(result, billing.Posting), result
        event(f"posted: {result.reason}")
        assert (result.voucher, result.deferred, result.reason) == tuple(split)
        assert result.voucher + result.deferred == amount
        self.postings[digest] = (fields, result)
        if job in self.reserved:
            self.reserved[job] -= drawn
        if job in self.covered:
            self.covered[job] -= drawn_cover
        if self.voucher_held.get(job):
            self.voucher_held[job] -= min(split.voucher, self.voucher_held[job])
        self.charged[job] = self.charged.get(job, 0) + amount
        self.pool_used += split.voucher
        code = self.enterprises[ent]
        self.cap_used[code] = self.cap_used.get(code, 0) + split.voucher
        self.owed[ent] += split.deferred
        key = (result.period, ent)
        self.usage[key] = self.usage.get(key, 0) + split.deferred

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), amount=st.integers(1_000_000_000, 6_000_000_000))
    def post_big_usage(self, data: st.DataObject, amount: int) -> None:
        """The same as post_usage, drawn as often again, with sizes that exhaust caps and the
        pool."""
        self.post_usage(data, amount)

    @precondition(lambda self: self.postings)
    @rule(data=st.data())
    def repeat_a_posting(self, data: st.DataObject) -> None:
        digest = data.draw(st.sampled_from(sorted(self.postings)))
        fields, first = self.postings[digest]
        later = self.now + data.draw(st.integers(0, DAY))
        again = self.call(
            lambda db: billing.post_usage(db, **fields, policy=self.policy, now_ms=later)
        )
        assert again == first

    @precondition(lambda self: self.postings)
    @rule(data=st.data(), change=st.sampled_from(["amount", "job_id", "enterprise_uscc"]))
    def change_a_posting(self, data: st.DataObject, change: str) -> None:
        digest = data.draw(st.sampled_from(sorted(self.postings)))
        fields = dict(self.postings[digest][0])
        fields[change] = fields[change] + 1 if change == "amount" else fields[change] + "x"
        result = self.call(
            lambda db: billing.post_usage(db, **fields, policy=self.policy, now_ms=self.now)
        )
        assert isinstance(result, billing.IdempotencyConflict), result
        assert change in result.detail

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def post_without_a_receipt(self, data: st.DataObject) -> None:
        job = data.draw(st.sampled_from(sorted(self.jobs)))
        ent, prov, lease = self.jobs[job]
        result = self.call(
            lambda db: billing.post_usage(
                db,
                enterprise_id=ent,
                provider_id=prov,
                enterprise_uscc=self.enterprises[ent],
                provider_uscc=self.providers[prov],
                lease_id=lease,
                job_id=job,
                receipt_digest=b"\x00" * 32,
                amount=1_000,
                policy=self.policy,
                now_ms=self.now,
            )
        )
        assert isinstance(result, billing.UnknownReceipt), result

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def settle_a_job(self, data: st.DataObject) -> None:
        job = data.draw(st.sampled_from(sorted(self.jobs)))
        result = self.call(lambda db: billing.settle_job(db, job, self.now))
        if job in self.reserved:
            assert isinstance(result, billing.Reservation) and result.held == 0
            self.reserved[job] = 0
            self.covered.pop(job, None)
            self.voucher_held[job] = 0
            self.max_cost.pop(job, None)
        else:
            assert result is None or result.held == 0

    @precondition(
        lambda self: any(code not in self.providers.values() for code in self.enterprises.values())
    )
    @rule(data=st.data())
    def an_enterprise_becomes_a_provider(self, data: st.DataObject) -> None:
        """Its company registers as a provider, and its open jobs may now go to its own agents."""
        ent = data.draw(
            st.sampled_from(
                sorted(
                    e for e, code in self.enterprises.items() if code not in self.providers.values()
                )
            )
        )
        code = self.enterprises[ent]
        moving = sorted(
            job
            for job, held in self.voucher_held.items()
            if held and self.jobs[job][0] == ent and job not in self.covered
        )
        begin(self.db)
        try:
            result: Any = billing.cover_self_dealing(self.db, code, self.now)
            provider = self.world.provider(code, self.now)
        except billing.LedgerError as exc:
            result = exc
        finally:
            self.db.conn.execute("COMMIT")
        need = sum(self.voucher_held[job] for job in moving)
        if need > self.headroom(ent):
            assert isinstance(result, billing.CreditExceeded), result
            assert "becoming a provider" in result.detail
            event("a provider registration refused: credit cannot cover its jobs")
            return
        assert [r.job_id for r in result] == moving
        event(f"a company becomes a provider, moving {len(moving)} reservations")
        for job in moving:
            self.covered[job] = self.voucher_held[job]
            self.voucher_held[job] = 0
        self.providers[provider] = code
        for job in sorted(self.jobs):  # its own agents win its jobs from now on
            if self.jobs[job][0] == ent:
                self.jobs[job] = (ent, provider, self.jobs[job][2])

    @precondition(lambda self: self.enterprises)
    @rule(data=st.data(), fraction=st.sampled_from([1, 2, 3]), overpay=st.booleans())
    def pay(self, data: st.DataObject, fraction: int, overpay: bool) -> None:
        ent = data.draw(st.sampled_from(sorted(self.enterprises)))
        amount = self.owed[ent] // fraction + (1 if overpay else 0)
        reference = f"bank-{len(self.payments) + 1}"
        result = self.call(lambda db: billing.record_payment(db, ent, amount, reference, self.now))
        if amount == 0:
            assert isinstance(result, billing.InvalidTransfer), result
        elif amount > self.owed[ent]:
            assert isinstance(result, billing.Overpayment), result
        else:
            assert isinstance(result, billing.Payment) and result.amount == amount
            self.payments[reference] = (ent, amount)
            self.owed[ent] -= amount
            self.paid[ent] = self.paid.get(ent, 0) + amount

    @precondition(lambda self: self.payments)
    @rule(data=st.data(), same=st.booleans())
    def repeat_a_payment(self, data: st.DataObject, same: bool) -> None:
        reference = data.draw(st.sampled_from(sorted(self.payments)))
        ent, amount = self.payments[reference]
        result = self.call(
            lambda db: billing.record_payment(
                db, ent, amount + (0 if same else 1), reference, self.now + 1
            )
        )
        if same:
            assert isinstance(result, billing.Payment) and result.amount == amount
        else:
            assert isinstance(result, billing.IdempotencyConflict), result
            assert reference in result.detail

    @precondition(lambda self: self.enterprises)
    @rule(data=st.data(), limit=st.integers(0, 12_000_000_000))
    def set_credit_limit(self, data: st.DataObject, limit: int) -> None:
        ent = data.draw(st.sampled_from(sorted(self.enterprises)))
        result = self.call(lambda db: billing.set_credit_limit(db, ent, limit, self.now))
        in_use = self.limit[ent] - self.headroom(ent)
        if limit < in_use and limit < self.limit[ent]:
            assert isinstance(result, billing.CreditExceeded), result
        else:
            assert result == limit
            self.limit[ent] = limit

    @rule(days=st.integers(0, 40), ms=st.integers(0, DAY))
    def advance_the_clock(self, days: int, ms: int) -> None:
        self.now += days * DAY + ms

    @rule(days=st.sampled_from([0, 9, 16, 30]))
    def next_month(self, days: int) -> None:
        """Jump to a day of the next month and close the one that ended."""
        _, end = billing.period_bounds(billing.period_of(self.now))
        self.now = end + days * DAY
        self.close_last_period()

    @rule()
    def close_last_period(self) -> None:
        start, _ = billing.period_bounds(billing.period_of(self.now))
        period = billing.period_of(start - 1)
        result = self.call(lambda db: billing.close_period(db, period, self.policy, self.now))
        assert isinstance(result, billing.PeriodClose), result
        if period in self.closed:
            return
        self.closed.add(period)
        issued = {s.party_id: s for s in result.statements if s.party_kind == "enterprise"}
        expected = {ent for (p, ent) in self.usage if p == period}
        assert set(issued) == expected
        for ent, statement in issued.items():
            assert statement.deferred == self.usage[(period, ent)]
            assert statement.total == statement.voucher + statement.deferred
            assert statement.due_at_ms is not None and statement.suspend_after_ms is not None
            self.statements.setdefault(ent, []).append(
                (period, statement.due_at_ms, statement.suspend_after_ms)
            )
        providers = [s for s in result.statements if s.party_kind == "provider"]
        assert sum(s.total for s in providers) == sum(s.total for s in issued.values())

    @rule()
    def close_the_current_period_too_early(self) -> None:
        result = self.call(
            lambda db: billing.close_period(db, billing.period_of(self.now), self.policy, self.now)
        )
        assert isinstance(result, billing.PeriodNotEnded), result

    @rule()
    def restart(self) -> None:
        self.db.conn.close()
        self.db = connect(self.path)
        self.world.db = self.db

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), amount=AMOUNTS)
    def crash_before_commit(self, data: st.DataObject, amount: int) -> None:
        """A receipt and its posting written but never committed: after a restart, neither is
        there."""
        job = data.draw(st.sampled_from(sorted(self.jobs)))
        ent, prov, lease = self.jobs[job]
        begin(self.db)
        digest = self.world.receipt(lease, self.now)
        try:
            billing.post_usage(
                self.db,
                enterprise_id=ent,
                provider_id=prov,
                enterprise_uscc=self.enterprises[ent],
                provider_uscc=self.providers[prov],
                lease_id=lease,
                job_id=job,
                receipt_digest=digest,
                amount=amount,
                policy=self.policy,
                now_ms=self.now,
            )
        except billing.LedgerError:
            pass
        self.db.conn.close()
        self.restart()
        assert (
            self.db.conn.execute(
                "SELECT COUNT(*) FROM receipts WHERE digest = ?", [digest]
            ).fetchone()[0]
            == 0
        )

    # -- what must hold after every step
    @invariant()
    def the_ledger_is_exact(self) -> None:
        assert check_invariants(self.db) == []
        status = billing.pool_status(self.db, self.policy)
        assert status["used"] == self.pool_used <= self.policy.pool_total_micro_yuan
        assert status["remaining"] == self.pool_free() >= 0
        for code, used in self.cap_used.items():
            cap = billing.get_account(self.db, names.cap_account(2026, code))
            assert cap is not None and cap.debits_posted == used
            assert used <= self.policy.per_company_cap_micro_yuan
        for code in set(self.enterprises.values()):
            cap = billing.get_account(self.db, names.cap_account(2026, code))
            assert cap is not None and cap.debits_pending == self.cap_held(code)
            assert cap.debit_headroom == self.cap_free(code) >= 0
        # every open reservation can still pay what its job may yet be charged, all at once:
        # its holds are its own, and no account is past its limit
        for job, max_cost in self.max_cost.items():
            reservation = billing.load_reservation(self.db, job)
            assert reservation is not None
            assert (reservation.remaining, reservation.voucher_remaining) == (
                self.reserved[job] + self.covered.get(job, 0),
                self.voucher_held[job],
            )
            assert reservation.held >= max_cost - self.charged.get(job, 0)
        for ent in self.enterprises:
            receivable = billing.get_account(self.db, names.receivable_account(ent))
            assert receivable is not None
            assert receivable.debits_posted - receivable.credits_posted == self.owed[ent]
            credit = billing.get_account(self.db, names.credit_account(ent))
            assert credit is not None
            assert credit.debits_pending == self.credit_held(ent)
            assert credit.debit_headroom == self.headroom(ent) >= 0
            assert billing.is_suspended(self.db, ent, self.now)[0] == self.suspended(ent)
            if self.suspended(ent):
                event("an enterprise is suspended")


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(
    max_examples=60,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class PostgresLedgerMachine(LedgerMachine):
    """The same model on PostgreSQL, fewer runs: a fresh database costs a server round."""

    engine = "postgresql"


TestPostgresLedgerMachine = PostgresLedgerMachine.TestCase
TestPostgresLedgerMachine.settings = settings(TestLedgerMachine.settings, max_examples=15)
if "postgresql" not in ENGINES:
    del TestPostgresLedgerMachine
if "sqlite" not in ENGINES:
    del TestLedgerMachine


def test_the_billing_surface_is_complete() -> None:
    """Every name other rooms use of `coordinator.billing` is in its `__all__`, and each exists."""
    import ast

    assert len(set(billing.__all__)) == len(billing.__all__)
    assert all(hasattr(billing, name) for name in billing.__all__)
    root = Path(__file__).resolve().parents[2]
    used: set[str] = set()
    for folder in ("coordinator", "tests", "scripts", "agent", "shared"):
        for path in (root / folder).rglob("*.py"):
            if path.is_relative_to(root / "coordinator" / "billing"):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module == "coordinator.billing":
                    used |= {alias.name for alias in node.names}
                elif (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "billing"
                ):
                    used.add(node.attr)
    assert sorted(used - set(billing.__all__) - {"__all__"}) == []
