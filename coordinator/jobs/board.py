"""The jobs an enterprise posts: submission (idempotent, reserved before it is auctioned),
cancellation, and which jobs a caller may see."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from coordinator import accounts, billing
from coordinator.accounts import Principal
from coordinator.commit import Committer
from coordinator.config import Settings
from coordinator.errors import Conflict, Forbidden, NotFound, Unprocessable
from coordinator.jobs.model import PENDING, Job
from coordinator.jobs.secrets import submitted_secrets
from coordinator.jobs.spec import JobRequest, parse_job_request
from coordinator.secret_box import SecretBox
from coordinator.signals import Signals
from coordinator.state import State
from coordinator.state.rows import job_row
from coordinator.storage import Database, Session
from coordinator.transitions import Transitions
from shared.errors import SuanliError
from shared.gpu_models import expand_model_filter
from shared.messages import api
from shared.messages.labels import matches

MAX_KEY = api.MAX_KEY


class JobBoard:
    def __init__(
        self,
        state: State,
        database: Database,
        transitions: Transitions,
        committer: Committer,
        signals: Signals,
        settings: Settings,
        policy: billing.VoucherPolicy,
        clock: Callable[[], int],
        secret_box: SecretBox,
    ) -> None:
        self.state = state
        self.secret_box = secret_box
        self.database = database
        self.transitions = transitions
        self.committer = committer
        self.signals = signals
        self.max_jobs = settings.max_jobs_per_enterprise
        self.policy = policy
        self.clock = clock

    def require_poster(self, principal: Principal) -> None:
        """Refuse a principal that may not post jobs (checked before the body is read)."""
        if principal.role != "enterprise":
            raise Forbidden("only enterprise accounts can post jobs")

    async def submit(
        self, principal: Principal, body: api.JobSubmit, header_key: str | None
    ) -> tuple[Job, bool]:
        """The job, and whether it is new (a retry with the same key gets the first one). The
        body's idempotency_key, checked at the door, wins over the Idempotency-Key header."""
        self.require_poster(principal)
        key = body.idempotency_key or header_key
        if key is None:
            key = accounts.new_id("auto")
        if not 0 < len(key) <= MAX_KEY or not key.isprintable():
            raise Unprocessable(
                f"Idempotency-Key: expected 1 to {MAX_KEY} printable characters",
                code="invalid_job",
            )
        request = parse_job_request(body)
        secrets = submitted_secrets(body)
        if request.gpu_models:
            request = _with_models(request)
        state = self.state
        existing = state.jobs_by_key.get((principal.subject_id, key))
        if existing is not None:
            if existing.request != request or state.secrets.get(existing.id, secrets) != secrets:
                raise Conflict(
                    f"idempotency key {key!r} was already used for job {existing.id} "
                    "with different fields",
                    code="idempotency_conflict",
                )
            return existing, False
        unfinished = sum(
            1
            for j in state.jobs.values()
            if j.enterprise_id == principal.subject_id and not j.final
        )
        if unfinished >= self.max_jobs:
            raise Conflict(
                f"you already have {unfinished} unfinished jobs, the most allowed",
                code="too_many_jobs",
            )
        now = self.clock()
        job = Job(
            id=accounts.new_id("job"),
            enterprise_id=principal.subject_id,
            idempotency_key=key,
            request=request,
            created_at_ms=now,
            reason="waiting_for_auction",
            reason_detail="the job waits for the next auction",
        )
        # the key is claimed at once so a concurrent retry cannot make a second job; the job is
        # auctioned only once its reservation and row are committed
        state.jobs_by_key[(job.enterprise_id, key)] = job
        try:
            await self.database.run(
                _submission_writes(job, secrets, self.secret_box, self.policy, now)
            )
        except BaseException:
            state.jobs_by_key.pop((job.enterprise_id, key), None)
            raise
        if secrets:
            state.secrets[job.id] = secrets
        state.index_job(job)
        self.signals.wake_scheduler()
        return job, True

    def find(self, principal: Principal, job_id: str) -> Job:
        """The job, if the caller may see it (an enterprise sees only its own)."""
        job = self.state.jobs.get(job_id)
        if job is None or (
            principal.role == "enterprise" and job.enterprise_id != principal.subject_id
        ):
            raise NotFound(f"no job {job_id}")
        return job

    def search(
        self,
        principal: Principal,
        state: str | None,
        limit: int,
        name: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> list[Job]:
        """The caller's jobs (an auditor's: everyone's), newest first; with `name` or `labels`,
        only those with that name and all those labels (never for an auditor, who sees them
        redacted: a filter would tell what the redaction hides)."""
        if principal.role == "auditor" and (name is not None or labels):
            raise Forbidden("auditors see job names and labels redacted, so cannot filter by them")
        jobs = [
            j
            for j in self.state.jobs.values()
            if (principal.role == "auditor" or j.enterprise_id == principal.subject_id)
            and (state is None or j.state == state)
            and (name is None or j.request.name == name)
            and (not labels or matches(j.request.labels, labels))
        ]
        jobs.sort(key=lambda j: j.created_at_ms, reverse=True)
        return jobs[:limit]

    async def cancel(self, principal: Principal, job_id: str) -> Job:
        if principal.role != "enterprise":
            raise Forbidden("only the enterprise that posted a job can cancel it")
        job = self.find(principal, job_id)
        if job.final or job.cancel_requested:
            return job
        was_pending = job.state == PENDING
        stop = self.transitions.cancel(job, self.clock())
        if was_pending:
            await self.committer.save(jobs=[job])
        elif stop is not None:
            lease = self.state.leases[job.lease_id or ""]
            await self.committer.save(jobs=[job], leases=[lease], entries=[stop])
            self.signals.notify(lease.agent_id)
        return job


def _submission_writes(
    job: Job,
    secrets: dict[str, str],
    box: SecretBox,
    policy: billing.VoucherPolicy,
    now: int,
) -> Callable[[Session], None]:
    """The job's reservation (unless its enterprise is suspended), row and secret values
    (sealed: the database never holds them in clear)."""
    row = job_row(job)
    max_cost = job.request.max_cost_micro_yuan

    def write(db: Session) -> None:
        suspended, why = billing.is_suspended(db, job.enterprise_id, now)
        if suspended:
            raise billing.Suspended(why)
        billing.reserve_job(db, job.id, job.enterprise_id, max_cost, policy=policy, now_ms=now)
        db.table("jobs").insert(row)
        if secrets:
            db.table("job_secrets").insert_all(
                [
                    {"job_id": job.id, "name": name, "value": box.seal(job.id, name, value)}
                    for name, value in secrets.items()
                ]
            )

    return write


def _with_models(request: JobRequest) -> JobRequest:
    try:
        models = expand_model_filter(request.gpu_models)
    except SuanliError as exc:
        raise Unprocessable(exc.detail, code="invalid_job") from None
    return replace(request, gpu_models=models)
