"""Prometheus metrics: request counts and latency by route, and market gauges read at scrape
time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from coordinator.jobs import JOB_STATES
from coordinator.role import LEADER, Role
from coordinator.scheduler import Counters
from coordinator.state import State
from coordinator.storage import Database

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MarketCollector(Collector):
    def __init__(
        self, state: State, counters: Counters, rejections_dropped: Callable[[], int]
    ) -> None:
        self.state = state
        self.counters = counters
        self.rejections_dropped = rejections_dropped

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        market = self.state.market
        summary = market.summary()
        yield GaugeMetricFamily(
            "suanli_agents_online",
            "Agents heartbeating within the timeout",
            value=summary["agents_online"],
        )
        gpus = GaugeMetricFamily(
            "suanli_gpus", "GPUs by model and availability", labels=["model", "status"]
        )
        for row in summary["models"]:
            for status in ("free", "leased", "unavailable"):
                gpus.add_metric([row["model"], status], row[status])
        yield gpus
        yield GaugeMetricFamily(
            "suanli_pool_pflops_bf16",
            "Dense BF16 capacity of usable and leased GPUs, in PFLOPS",
            value=summary["pflops_bf16_milli"] / 1000,
        )
        states = Counter(job.state for job in self.state.jobs.values())
        jobs = GaugeMetricFamily("suanli_jobs", "Jobs by state", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], states.get(state, 0))
        yield jobs
        counters = self.counters
        yield CounterMetricFamily(
            "suanli_auction_rounds", "Auction rounds run", value=counters.auction_rounds
        )
        yield CounterMetricFamily(
            "suanli_placements", "Jobs placed on an agent", value=counters.placements
        )
        yield CounterMetricFamily(
            "suanli_auction_seconds", "Time spent in auction rounds", value=counters.auction_seconds
        )
        yield CounterMetricFamily(
            "suanli_event_loop_stalls",
            "Times the coordinator's event loop went over a second without a turn (no agent's "
            "silence counts against it for that time)",
            value=counters.loop_stalls,
        )
        yield CounterMetricFamily(
            "suanli_receipt_rejections_dropped",
            "Refused receipts answered but not stored: an agent's daily limit was reached",
            value=self.rejections_dropped(),
        )


class RoleCollector(Collector):
    """Leadership and the database's latency: the epoch, takeovers this process made or saw,
    and the time the writer's transactions take."""

    def __init__(self, role: Role, database: Database) -> None:
        self.role = role
        self.database = database

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        role = self.role
        yield GaugeMetricFamily(
            "suanli_leader", "1 on the leader, 0 on a standby", value=int(role.name == LEADER)
        )
        yield GaugeMetricFamily(
            "suanli_leader_epoch",
            "The leader's epoch (the fencing token of its writes; 0 on SQLite)",
            value=role.epoch or 0,
        )
        yield CounterMetricFamily(
            "suanli_takeovers", "Takeovers of the database's lead so far", value=role.takeovers
        )
        yield CounterMetricFamily(
            "suanli_database_transaction_seconds",
            "Time spent in the writer's transactions (with _count: mean latency)",
            value=self.database.batch_seconds,
        )
        yield CounterMetricFamily(
            "suanli_database_transactions", "The writer's transactions", value=self.database.batches
        )


class Metrics:
    def __init__(
        self,
        state: State,
        counters: Counters,
        rejections_dropped: Callable[[], int],
        role: Role | None = None,
        database: Database | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "suanli_http_request_seconds",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30),
        )
        self.registry.register(MarketCollector(state, counters, rejections_dropped))
        if role is not None and database is not None:
            self.registry.register(RoleCollector(role, database))

    def render(self) -> bytes:
        return generate_latest(self.registry)
