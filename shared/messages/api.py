"""The JSON API's bodies: jobs, market, account, voucher pool and ledger balances, as the
coordinator serves them and the `suanli` client reads them. Query parameters are declared
here too, so that the OpenAPI document names and bounds them from the same source."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from shared.image_refs import registry_host
from shared.messages.fields import (
    UNICODE_TEXT,
    Count,
    Message,
    MicroYuan,
    Milliseconds,
    require_printable,
)
from shared.messages.labels import JobName, Labels, Selector
from shared.messages.money_views import (
    Account as Account,
)
from shared.messages.money_views import (
    AccountBalance as AccountBalance,
)
from shared.messages.money_views import (
    LedgerBalances as LedgerBalances,
)
from shared.messages.money_views import (
    Reservation as Reservation,
)
from shared.messages.money_views import (
    Role as Role,
)
from shared.messages.money_views import (
    Statement as Statement,
)
from shared.messages.money_views import (
    StatementLine as StatementLine,
)
from shared.messages.money_views import (  # declared there, named here as ever
    Voucher as Voucher,
)
from shared.messages.money_views import (
    VoucherPool as VoucherPool,
)
from shared.messages.placement import Network, ScratchBytes, check_scratch
from shared.messages.registry_auth import RegistryAuth

JobState = Literal["pending", "leased", "running", "succeeded", "failed", "cancelled", "lost"]
Unset = msgspec.UnsetType
UNSET = msgspec.UNSET

MAX_GPUS = 64
MAX_COMMAND_ITEMS = 256
MAX_COMMAND_BYTES = 64 * 1024
MAX_ENV = 128
MAX_ENV_VALUE = 4096
MAX_DURATION_S = 30 * 86_400
MAX_PRICE = 10**12
MAX_MODELS = 16
MAX_MODEL_NAME = 128
MAX_KEY = 128

# (?!\n) keeps `$` from matching before a final newline, as fullmatch would not
IMAGE = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}(?!\n)$",
        description="container image reference, e.g. registry.example/team/train:1.4",
        extra={"expected": "an image reference of 1 to 255 characters without spaces"},
    ),
]
EnvName = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}(?!\n)$",
        extra={"expected": "letters, digits and _, not starting with a digit"},
    ),
]
EnvValue = Annotated[
    str,
    msgspec.Meta(
        max_length=MAX_ENV_VALUE,
        pattern=UNICODE_TEXT,
        extra={"expected": f"a string of at most {MAX_ENV_VALUE} characters without NUL"},
    ),
]
Env = Annotated[dict[EnvName, EnvValue], msgspec.Meta(max_length=MAX_ENV)]
SecretEnvValue = Annotated[
    str,
    msgspec.Meta(
        max_length=MAX_ENV_VALUE,
        pattern=UNICODE_TEXT,
        extra={
            "expected": f"a string of at most {MAX_ENV_VALUE} characters without NUL",
            "secret": True,  # a refusal never repeats it
        },
    ),
]
SecretEnv = Annotated[dict[EnvName, SecretEnvValue], msgspec.Meta(max_length=MAX_ENV)]
CommandPart = Annotated[
    str,
    msgspec.Meta(
        max_length=MAX_COMMAND_BYTES,
        pattern=UNICODE_TEXT,
        extra={"expected": "a string of valid Unicode without NUL"},
    ),
]
ModelName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_MODEL_NAME,
        pattern=UNICODE_TEXT,
        extra={"expected": f"a model name of 1 to {MAX_MODEL_NAME} characters"},
    ),
]


def _limit(low: int, high: int, description: str) -> msgspec.Meta:
    return msgspec.Meta(ge=low, le=high, description=description)


# -- jobs -------------------------------------------------------------------------------


class JobSubmit(Message, forbid_unknown_fields=True):
    """POST /v1/jobs. Fields left out take their defaults (cpus_milli and memory_bytes scale
    with gpus); the Idempotency-Key header stands in for idempotency_key."""

    image: IMAGE
    gpus: Annotated[int, _limit(1, MAX_GPUS, f"number of GPUs, 1 to {MAX_GPUS}")]
    max_duration_s: Annotated[int, _limit(1, MAX_DURATION_S, "longest the job may run, in seconds")]
    max_price_per_gpu_hour_micro_yuan: Annotated[
        int, _limit(1, MAX_PRICE, "most the job pays per GPU-hour, in micro-yuan")
    ]
    command: Annotated[
        list[CommandPart],
        msgspec.Meta(
            max_length=MAX_COMMAND_ITEMS,
            description="command and arguments (empty: the image's default)",
        ),
    ] = []
    env: Annotated[Env, msgspec.Meta(description="environment variables")] = {}
    secret_env: Annotated[
        SecretEnv,
        msgspec.Meta(
            description="secret environment variables: delivered only to the winning agent, "
            "never shown back (the name is, with a redacted value), never logged, erased when "
            "the job ends"
        ),
    ] = {}
    registry_auth: (
        Annotated[
            RegistryAuth,
            msgspec.Meta(
                description="credentials for the image's registry: delivered only to the "
                "winning agent for its pull, never shown back (a view says registry_auth: "
                "true), never logged, erased when the job ends"
            ),
        ]
        | None
    ) = None
    min_gpu_memory_bytes: Annotated[int, _limit(0, 1 << 50, "least memory each GPU must have")] = 0
    gpu_models: Annotated[
        list[ModelName],
        msgspec.Meta(
            max_length=MAX_MODELS, description='GPU models allowed (empty: any), e.g. ["H100"]'
        ),
    ] = []
    cpus_milli: (
        Annotated[
            int,
            _limit(100, 1024 * 1000, "CPU limit in thousandths of a core (default 4000 per GPU)"),
        ]
        | Unset
    ) = UNSET
    memory_bytes: (
        Annotated[
            int,
            _limit(64 << 20, 1 << 44, "memory limit for the container (default 16 GiB per GPU)"),
        ]
        | Unset
    ) = UNSET
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY)] | None = None
    name: JobName | None = None
    labels: Labels = {}
    network: Network = "none"
    scratch_bytes: ScratchBytes = 0

    def __post_init__(self) -> None:
        require_printable(self, ("idempotency_key",), 1, MAX_KEY)
        check_scratch(self.scratch_bytes)
        size = sum(len(part.encode()) for part in self.command)
        if size > MAX_COMMAND_BYTES:
            raise ValueError(
                f"command: expected at most {MAX_COMMAND_BYTES} bytes in all, got {size}"
            )
        both = sorted(set(self.env) & set(self.secret_env))
        if both:
            raise ValueError(
                f"secret_env: expected names env does not have, got {', '.join(both)} in both; "
                "give each variable once"
            )
        count = len(self.env) + len(self.secret_env)
        if count > MAX_ENV:
            raise ValueError(
                f"env: expected at most {MAX_ENV} variables together with secret_env, got {count}"
            )
        if self.registry_auth is not None:
            host = registry_host(self.image)
            if self.registry_auth.serveraddress.lower() != host:
                raise ValueError(
                    f"registry_auth: expected credentials for {host}, the registry of image "
                    f"{self.image}, got them for {self.registry_auth.serveraddress}"
                )


class JobSpecView(Message):
    """A job's spec as shown back: secret values never, and env values not to auditors."""

    image: str
    command: list[str]
    env: dict[str, str]
    secret_env: dict[str, str]
    registry_auth: bool
    gpus: int
    min_gpu_memory_bytes: int
    gpu_models: list[str]
    cpus_milli: int
    memory_bytes: int
    max_duration_s: int
    max_price_per_gpu_hour_micro_yuan: MicroYuan
    name: str | None = None  # auditors see no name and no labels
    labels: dict[str, str] = {}
    network: Network = "none"
    scratch_bytes: ScratchBytes = 0


class JobView(Message):
    id: str
    state: JobState
    reason: str | None
    reason_detail: str | None
    agent_id: str | None
    lease_id: str | None
    gpu_uuids: list[str]
    price_per_gpu_hour_micro_yuan: MicroYuan | None
    price_per_gpu_hour_yuan: str | None
    created_at_ms: Milliseconds
    started_at_ms: Milliseconds | None
    ended_at_ms: Milliseconds | None
    lease_ends_at_ms: Milliseconds | None
    exit_code: int | None
    charged_micro_yuan: MicroYuan
    voucher_micro_yuan: MicroYuan
    deferred_micro_yuan: MicroYuan
    attempts: int
    cancel_requested: bool
    idempotency_key: str
    spec: JobSpecView


class JobList(Message):
    jobs: list[JobView]


class JobListQuery(Message):
    """GET /v1/jobs?state=&limit=&name=&label= (newest first; name and label: not for
    auditors, who see them redacted)."""

    state: JobState | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    name: JobName | None = None
    label: Selector | None = None


class JobLogQuery(Message):
    """GET /v1/jobs/{job_id}/logs?offset=&limit="""

    offset: Annotated[int, msgspec.Meta(ge=0, le=1 << 40)] = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=1 << 20)] = 256 * 1024


class JobLogPage(Message):
    """A page of a job's output; `complete` once the job is final and this is its last page."""

    job_id: str
    offset: Count
    next_offset: Count
    data: str
    job_state: JobState
    complete: bool


# -- market, account, vouchers, ledger ----------------------------------------------------


class MarketModel(Message):
    model: str
    gpus: Count
    free: Count
    leased: Count
    unavailable: Count
    memory_total_bytes: Count
    tflops_bf16_each: int | float | None
    ask_min_micro_yuan: MicroYuan | None
    ask_median_micro_yuan: MicroYuan | None
    ask_max_micro_yuan: MicroYuan | None


class Market(Message):
    """Capacity by GPU model, the asks of free GPUs, and the pool in PFLOPS."""

    agents_online: Count
    agents_total: Count
    models: list[MarketModel]
    pflops_bf16_milli: Count
    pflops_bf16: str


class Health(Message):
    status: Literal["ok"]
    time_ms: Milliseconds
    role: Literal["leader", "standby"]
    epoch: int | None  # the leader's epoch on PostgreSQL; None on SQLite
    leader: str | None  # where the leader is, when known
