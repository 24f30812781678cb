"""A LocalRuntime's side of the shared event bus: forwarding its outbox, reading what others published.

The promises and the mechanism are described in `runtime/local/bus.py`. This class keeps the state a
runtime needs between its rounds: its origin id and read position (both in its own database's `meta`
table), the entries read from the bus and not yet committed as deliveries, the outbox rows already on the
bus and not yet deleted, and when to look at the bus or retry a failed forward. Which subscriptions an
entry reaches is the execution core's rule (`core.bus_subscriptions_for`); the runtime applies it.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from eventual_nb.runtime.local.bus import CHECK_SECONDS, PRUNE_EVERY_SECONDS, Bus, BusEntry, Doorbell
from eventual_nb.runtime.local.store import Database

LOGGER = logging.getLogger("eventual_nb.runtime")

#: bus entries read per round, and outbox rows forwarded per bus transaction
BATCH = 1000
#: seconds before a forward that failed (the bus locked or unwritable) is tried again
FORWARD_RETRY_SECONDS = 1.0


class BusLink:
    """One runtime's connection to a bus (see the module docstring); used from the runtime's loop only."""

    def __init__(self, bus: Bus, database: Database, retention: timedelta) -> None:
        self.bus = bus
        self.database = database
        self.retention = retention
        self.doorbell = Doorbell(bus.path)
        origin = database.meta("origin")
        if origin is None:
            origin = secrets.token_hex(8)
            database.set_meta("origin", origin)
        #: this runtime's name on the bus: its own entries are skipped when reading (delivered locally already)
        self.origin = origin
        self._position_key = f"bus-position:{bus.id}"
        stored = database.meta(self._position_key)
        if stored is None:  # a bus this database never read: start at its end (see bus.py)
            self.position = bus.end()
            database.set_meta(self._position_key, str(self.position))
        else:
            self.position = int(stored)
        #: entries read from the bus, waiting for the next round to turn them into deliveries
        self.incoming: list[BusEntry] = []
        #: the last outbox id known to be on the bus (its rows are deleted in the next round)
        self.forwarded: int | None = None
        #: whether the outbox may hold rows not yet on the bus
        self.outbox_pending = True
        self._retry_at = 0.0
        self._dirty = True
        self._checked_at = -math.inf
        self._pruned_at = -math.inf

    @classmethod
    def open(cls, path: str | os.PathLike[str], database: Database, durability: str, retention: timedelta) -> BusLink:
        bus = Bus(path, durability)
        try:
            link = cls(bus, database, retention)
            link.prune(time.time())
            link.report_missed()
        except BaseException:
            bus.close()
            raise
        return link

    def listen(self, loop: Any, wake: Callable[[], None]) -> None:
        """Be rung by other runtimes: mark the bus as worth reading and wake the scheduler."""

        def rang() -> None:
            self._dirty = True
            wake()

        self.doorbell.listen(loop, rang)

    def close(self) -> None:
        self.doorbell.close()
        self.bus.close()

    # -- reading -----------------------------------------------------------------------------------

    def poll(self, now: float) -> None:
        """Between rounds: read new entries if rung, or if `CHECK_SECONDS` passed since the last look."""
        if self.incoming or not (self._dirty or now >= self._checked_at + CHECK_SECONDS):
            return
        self._dirty = False
        self._checked_at = now
        try:
            self.incoming = self.bus.after(self.position, BATCH)
        except Exception as exc:  # noqa: BLE001 - a busy or broken bus file must not stop the runtime
            LOGGER.error("reading the event bus %s failed: %s: %s", self.bus.path, type(exc).__name__, exc)
            return
        if len(self.incoming) == BATCH:
            self._dirty = True  # more to read after this batch is committed

    def to_take(self) -> bool:
        """Whether `take` has anything to do (entries read, or forwarded rows to delete): most rounds have not."""
        return bool(self.incoming) or self.forwarded is not None

    def take(self) -> tuple[list[BusEntry], Callable[[], None]]:
        """Inside a round: the entries read that other runtimes published, with the read position moved past
        every entry read and the outbox rows already on the bus deleted, in the round's transaction; and
        what undoes that in memory if the transaction rolls back."""
        entries, self.incoming = self.incoming, []
        position, forwarded = self.position, self.forwarded
        if entries:
            self.position = entries[-1].seq
            self.database.set_meta(self._position_key, str(self.position))
        if forwarded is not None:
            self.database.delete_outbox(forwarded)
            self.forwarded = None

        def undo() -> None:
            self.incoming = entries + self.incoming
            self.position = position
            if self.forwarded is None:
                self.forwarded = forwarded

        return [entry for entry in entries if entry.origin != self.origin], undo

    # -- writing -----------------------------------------------------------------------------------

    def forward(self, now: float) -> None:
        """After a commit: append the outbox to the bus and ring the other runtimes. A failure is logged and
        retried after `FORWARD_RETRY_SECONDS` (the rows are safe in the outbox)."""
        try:
            while True:
                rows = self.database.outbox(self.forwarded or 0, BATCH)
                if rows:
                    self.bus.append(self.origin, rows)
                    self.forwarded = rows[-1].id
                if len(rows) < BATCH:
                    break
        except Exception as exc:  # noqa: BLE001 - kept in the outbox; the next try forwards it
            LOGGER.error("appending to the event bus %s failed: %s: %s", self.bus.path, type(exc).__name__, exc)
            self.outbox_pending = True
            self._retry_at = now + FORWARD_RETRY_SECONDS
            return
        self.outbox_pending = False
        self.doorbell.ring()
        if now >= self._pruned_at + PRUNE_EVERY_SECONDS:
            self.prune(now)

    def prune(self, now: float) -> None:
        self._pruned_at = now
        try:
            deleted = self.bus.prune(now - self.retention.total_seconds())
        except Exception as exc:  # noqa: BLE001 - pruning can wait for the next time
            LOGGER.error("pruning the event bus %s failed: %s: %s", self.bus.path, type(exc).__name__, exc)
            return
        if deleted:
            LOGGER.info("pruned %d events older than %s from the event bus %s", deleted, self.retention, self.bus.path)

    def report_missed(self) -> None:
        """Say so when entries this runtime had not read yet were pruned (it was stopped for too long)."""
        first = self.bus.first()
        if first is not None and first > self.position + 1:
            LOGGER.warning(
                "the event bus %s pruned up to %d events (older than %s) before this runtime read them",
                self.bus.path,
                first - self.position - 1,
                self.retention,
            )

    # -- waking ------------------------------------------------------------------------------------

    def has_work(self, now: float) -> bool:
        return bool(self.incoming) or (self.outbox_pending and now >= self._retry_at)

    def next_wake(self) -> float:
        """When the scheduler must wake for the bus by itself (a look for lost rings, a forward to retry)."""
        wake = self._checked_at + CHECK_SECONDS
        return min(wake, self._retry_at) if self.outbox_pending else wake
