"""The ask index: agents with free GPUs kept ordered by ask, so an auction looks only at the
cheapest offers that can decide it.

Agents are also bucketed by how many free GPUs they have (in powers of two), in all and per
(model, memory) kind, so a job's auction walks only the lists that could fit it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from sortedcontainers import SortedList

from coordinator.market.agents import Agent
from shared.auction import AgentOffer, JobSpec

# (ask, kinds of free GPU as (model, memory, count bucket), bucket of all free GPUs,
#  egress allowed, free scratch in whole GiB: a change of either moves the version)
_IndexKey = tuple[int, tuple[tuple[str, int, int], ...], int, bool, int]

_TOO_FEW, _WRONG_MODEL, _MEMORY_SHORT, _NO_EGRESS, _SCRATCH_SHORT, _TOO_DEAR, _ELIGIBLE = range(7)


class OfferIndex:
    """Ask-ordered lists of the agents that have free GPUs, and a version that moves when
    the offers grow (auctions that failed before may succeed now)."""

    def __init__(self) -> None:
        self._offering: SortedList = SortedList()
        self._offering_keys: dict[str, tuple[int, str]] = {}
        # (model, memory, free-count bucket) -> agents with that many such free GPUs, by ask
        self._by_hardware: dict[tuple[str, int, int], SortedList] = {}
        # free-count bucket -> agents with that many free GPUs in all, by ask
        self._by_free: dict[int, SortedList] = {}
        self._index_keys: dict[str, _IndexKey] = {}
        self.version = 0

    def update(self, agent: Agent, capacity_may_grow: bool = True) -> None:
        """Put the agent in, or take it out of, the index after anything changed."""
        ask = agent.ask_per_gpu_hour
        key: tuple[int, str] | None = None
        if (
            agent.online
            and not agent.revoked
            and ask is not None
            and any(g.offerable for g in agent.gpus.values())
        ):
            key = (ask, agent.agent_id)
        old = self._offering_keys.get(agent.agent_id)
        if old != key:  # most updates (a heartbeat) leave the agent where it is
            if old is not None:
                del self._offering_keys[agent.agent_id]
                self._offering.remove(old)
            if key is not None:
                self._offering.add(key)
                self._offering_keys[agent.agent_id] = key
        new_index = None
        if key is not None:
            counts: dict[tuple[str, int], int] = {}
            for g in agent.gpus.values():
                if g.offerable:
                    kind = (g.model, g.memory_total_bytes)
                    counts[kind] = counts.get(kind, 0) + 1
            new_index = (
                key[0],
                tuple(sorted((model, memory, _bucket(n)) for (model, memory), n in counts.items())),
                _bucket(sum(counts.values())),
                agent.egress_allowed,
                agent.scratch_free_bytes() >> 30,
            )
        self._reindex(agent.agent_id, new_index, capacity_may_grow)

    def _reindex(self, agent_id: str, new: _IndexKey | None, capacity_may_grow: bool) -> None:
        old = self._index_keys.pop(agent_id, None)
        if old == new:
            if new is not None:
                self._index_keys[agent_id] = new
            return
        if capacity_may_grow:
            self.version += 1
        if old is not None:
            ask, keys, free, _, _ = old
            for key in keys:
                self._by_hardware[key].remove((ask, agent_id))
            self._by_free[free].remove((ask, agent_id))
        if new is not None:
            ask, keys, free, _, _ = new
            for key in keys:
                self._by_hardware.setdefault(key, SortedList()).add((ask, agent_id))
            self._by_free.setdefault(free, SortedList()).add((ask, agent_id))
            self._index_keys[agent_id] = new

    def candidates(
        self,
        job: JobSpec,
        agents: dict[str, Agent],
        now_ms: int,
        half_life_ms: int,
        reason_sample: int = 8,
    ) -> list[AgentOffer]:
        """The offers that decide the job's auction: every eligible one up to the second ask.

        Walks, cheapest first, only the agents whose free GPUs could fit the job (by model,
        memory and count). When nobody is eligible it returns a few of the offers that came
        closest, so the auction itself names why the job must wait.
        """
        need = _bucket(job.gpu_count)
        excluded = set(job.excluded_agents)
        roomy = [listed for bucket, listed in self._by_free.items() if bucket >= need and listed]
        if not roomy:
            lists: list[SortedList] = []
        elif not job.gpu_models and not job.min_gpu_memory_bytes:
            lists = roomy
        else:
            lists = self._hardware_lists(job, job.min_gpu_memory_bytes)
        eligible: list[AgentOffer] = []
        # offers that fit the hardware but miss a later filter, by the stage they reached
        closest: dict[int, list[AgentOffer]] = {_NO_EGRESS: [], _SCRATCH_SHORT: [], _TOO_DEAR: []}
        second_ask: int | None = None
        for ask, agent_id in _merged(lists):
            if second_ask is not None and ask > second_ask:
                break
            if agent_id in excluded or self._index_keys[agent_id][2] < need:
                continue
            agent = agents[agent_id]
            stage = _stage(job, agent, ask)
            if stage == _ELIGIBLE:
                eligible.append(agent.offer(now_ms, half_life_ms))
                if len(eligible) >= 2 and second_ask is None:
                    second_ask = ask
            elif not eligible and stage in closest and len(closest[stage]) < reason_sample:
                closest[stage].append(agent.offer(now_ms, half_life_ms))
                if len(closest[_TOO_DEAR]) >= reason_sample:
                    break
        if eligible:
            return eligible
        furthest = next((found for _, found in sorted(closest.items(), reverse=True) if found), [])
        if furthest:
            return furthest
        searches: list[tuple[int, list[SortedList]]] = [
            (_MEMORY_SHORT, self._hardware_lists(job, 0)),
            (_WRONG_MODEL, roomy),
            (_TOO_FEW, [self._offering]),
        ]
        if not roomy:
            searches = searches[2:]
        return _closest_misses(job, agents, now_ms, half_life_ms, searches, reason_sample)

    def _hardware_lists(self, job: JobSpec, min_memory: int) -> list[SortedList]:
        # an agent with enough suitable GPUs spread over k (model, memory) kinds has at least
        # ceil(need / k) of one kind, so lists with fewer can be skipped
        keys = [
            key
            for key in self._by_hardware
            if (not job.gpu_models or key[0] in job.gpu_models) and key[1] >= min_memory
        ]
        kinds = len({key[:2] for key in keys})
        least = _bucket(-(-job.gpu_count // max(1, kinds)))
        return [self._by_hardware[key] for key in keys if key[2] >= least]


def _closest_misses(
    job: JobSpec,
    agents: dict[str, Agent],
    now_ms: int,
    half_life_ms: int,
    searches: list[tuple[int, list[SortedList]]],
    sample: int,
) -> list[AgentOffer]:
    """Nobody could run the job at any price: a few offers from the furthest stage reached."""
    excluded = set(job.excluded_agents)
    for stage_wanted, lists in searches:
        found = []
        for ask, agent_id in _merged(lists):
            if agent_id in excluded:
                continue
            agent = agents[agent_id]
            if _stage(job, agent, ask) == stage_wanted:
                found.append(agent.offer(now_ms, half_life_ms))
                if len(found) >= sample:
                    break
        if found:
            return found
    return []


def _bucket(count: int) -> int:
    """Free-GPU counts grouped by powers of two: 1, 2-3, 4-7, 8-15, ..."""
    return count.bit_length()


def _merged(lists: list[SortedList]) -> Iterator[tuple[int, str]]:
    """(ask, agent_id) from several ask-ordered lists, cheapest first, each agent once."""
    seen: set[str] = set()
    for ask, agent_id in heapq.merge(*lists):
        if agent_id not in seen:
            seen.add(agent_id)
            yield ask, agent_id


def _stage(job: JobSpec, agent: Agent, ask: int) -> int:
    """How far an agent gets through the auction's filters (mirrors shared.auction)."""
    enough = model_ok = memory_ok = 0
    models = job.gpu_models
    for gpu in agent.gpus.values():
        if not gpu.offerable:
            continue
        enough += 1
        if models and gpu.model not in models:
            continue
        model_ok += 1
        if gpu.memory_total_bytes < job.min_gpu_memory_bytes:
            continue
        memory_ok += 1
    if enough < job.gpu_count:
        return _TOO_FEW
    if model_ok < job.gpu_count:
        return _WRONG_MODEL
    if memory_ok < job.gpu_count:
        return _MEMORY_SHORT
    if job.egress and not agent.egress_allowed:
        return _NO_EGRESS
    if agent.scratch_free_bytes() < job.scratch_bytes:
        return _SCRATCH_SHORT
    if ask > job.max_price_per_gpu_hour:
        return _TOO_DEAR
    return _ELIGIBLE
