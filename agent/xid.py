"""Critical XID errors as NVML's event API reports them, watched from a thread of their own.

The driver raises an XID when a GPU hits a fault (79: fell off the bus, 48: double-bit ECC,
31: a job's memory fault...). NVML delivers them through an event set; waiting on one
blocks, so a daemon thread waits with a short timeout and the event loop only reads the
tallies. A driver or board without events leaves the watch off for that GPU, never raises.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from typing import Any

import pynvml

__all__ = ["XidTally", "XidWatcher"]

log = logging.getLogger(__name__)
WAIT_MS = 500
RETRY_S = 30.0


@dataclass(frozen=True, slots=True)
class XidTally:
    """One GPU's XIDs since the agent started: DCGM reports the last value, we also count."""

    last: int
    count: int


class XidWatcher:
    """Keeps, per GPU UUID, the last critical XID seen and how many were seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tallies: dict[str, XidTally] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.watched: frozenset[str] = frozenset()

    def tallies(self) -> dict[str, XidTally]:
        with self._lock:
            return dict(self._tallies)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nvml-xid", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=WAIT_MS / 1000 * 4)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as error:
                log.info("XID watch waits for NVML: %s", error)
                self._stop.wait(RETRY_S)
                continue
            try:
                self._watch()
            except pynvml.NVMLError as error:
                log.warning("XID watch stopped (%s); it starts again shortly", error)
                self._stop.wait(RETRY_S)
            finally:
                self.watched = frozenset()
                try:
                    pynvml.nvmlShutdown()
                except pynvml.NVMLError:
                    pass

    def _watch(self) -> None:
        events = pynvml.nvmlEventSetCreate()
        try:
            uuids = self._register(events)
            self.watched = frozenset(uuids.values())
            while not self._stop.is_set():
                try:
                    data = pynvml.nvmlEventSetWait_v2(events, WAIT_MS)
                except pynvml.NVMLError_Timeout:
                    continue
                if data.eventType & pynvml.nvmlEventTypeXidCriticalError:
                    self._record(uuids, data)
        finally:
            pynvml.nvmlEventSetFree(events)

    def _register(self, events: Any) -> dict[int, str]:
        """Register every GPU that offers critical-XID events; handle address -> UUID."""
        uuids: dict[int, str] = {}
        for index in range(int(pynvml.nvmlDeviceGetCount())):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = str(pynvml.nvmlDeviceGetUUID(handle))
                pynvml.nvmlDeviceRegisterEvents(
                    handle, pynvml.nvmlEventTypeXidCriticalError, events
                )
            except pynvml.NVMLError as error:
                log.warning("GPU %d: no XID events (%s)", index, error)
                continue
            uuids[_address(handle)] = uuid
        return uuids

    def _record(self, uuids: dict[int, str], data: Any) -> None:
        uuid = uuids.get(_address(data.device))
        if uuid is None:
            return
        xid = int(data.eventData)
        log.error("GPU %s reported critical XID %d", uuid, xid)
        with self._lock:
            before = self._tallies.get(uuid)
            self._tallies[uuid] = XidTally(last=xid, count=(before.count if before else 0) + 1)


def _address(handle: Any) -> int:
    """An NVML device handle is a pointer; its address names the device."""
    return int(ctypes.cast(handle, ctypes.c_void_p).value or 0)
