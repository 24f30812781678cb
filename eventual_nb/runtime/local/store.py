"""The SQLite file behind `LocalRuntime`: its schema and migrations, durability, the lock, and every query.

`Database` holds all of the LocalRuntime's SQL: the runtime asks it for rows by name (`sqlite3.Row`, or the
small dataclasses below) and never writes a statement itself.

Schema versions and migrations
------------------------------
The schema's version is the file's `PRAGMA user_version`. `MIGRATIONS` lists numbered steps, each one
transaction that moves a database from the version before it to its own (in the manner of DBOS's schema
migrations): opening a database applies those it lacks, in order, so a file written by an earlier release
opens with its executions in flight. Version 0 is a new, empty file — or one written by release 0.1 (commit
eb99dcb), which had no version: migration 1 creates that release's tables where they are missing, so both
start from the same place. A file of a later release than this code is refused. A new migration is appended
with the next number; a released one never changes.

The lock
--------
One process owns a database at a time: an `flock` on `<db>.lock`, which names its holder, so the runtime
can treat every 'running' row it finds at start-up as left behind by a crash. `fcntl` is imported when a
database is opened, not with this module, so `import eventual_nb` works where it does not exist (Windows);
opening a database there says why it cannot. Not `filelock`: where `fcntl` is missing on a POSIX-like
system it falls back to a lock that is a file's mere existence, which a killed process leaves behind (every
restart after a crash would refuse), and it truncates the lock file before locking, erasing the holder's
name that a refused second process reports.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from eventual_nb.engine.history import EVENT_ADAPTER, HistoryEvent, LogEntry, TimerCompleted, WorkflowStarted
from eventual_nb.errors import EventualError
from eventual_nb.runtime import core
from eventual_nb.runtime.base import DeadLetter, Execution, ExecutionStatus
from eventual_nb.runtime.core.schedules import ScheduleState
from eventual_nb.runtime.entity_store import EntityKey, StoredEntry, Write
from eventual_nb.runtime.local.bus import Outgoing

DURABILITY = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}

#: the tables of release 0.1 (version 1)
SCHEMA_V1 = (
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS executions(
        id TEXT PRIMARY KEY,
        workflow TEXT NOT NULL,
        status TEXT NOT NULL,
        input TEXT,
        input_hash TEXT NOT NULL,
        result TEXT,
        error TEXT,
        message TEXT,
        start_time TEXT NOT NULL,
        end_time TEXT,
        parent TEXT,
        parent_seq INTEGER,
        service TEXT,
        first_step_done INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS executions_by_status ON executions(status)",
    "CREATE INDEX IF NOT EXISTS executions_by_workflow ON executions(workflow, status)",
    "CREATE INDEX IF NOT EXISTS executions_by_parent ON executions(parent) WHERE parent IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS history(
        execution_id TEXT NOT NULL, idx INTEGER NOT NULL, event TEXT NOT NULL,
        PRIMARY KEY(execution_id, idx)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS inbox(
        id INTEGER PRIMARY KEY AUTOINCREMENT, execution_id TEXT NOT NULL, event TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS inbox_by_execution ON inbox(execution_id, id)",
    """CREATE TABLE IF NOT EXISTS timers(
        execution_id TEXT NOT NULL, key TEXT NOT NULL, due REAL NOT NULL, payload TEXT,
        PRIMARY KEY(execution_id, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS timers_by_due ON timers(due)",
    """CREATE TABLE IF NOT EXISTS activities(
        execution_id TEXT NOT NULL, seq INTEGER NOT NULL, name TEXT NOT NULL, input TEXT NOT NULL,
        options TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL, due REAL,
        deadline REAL, heartbeat_deadline REAL, heartbeat_details TEXT, runs INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY(execution_id, seq)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS activities_by_due ON activities(due) WHERE due IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS signal_ids(
        execution_id TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY(execution_id, id)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS logs(
        id INTEGER PRIMARY KEY AUTOINCREMENT, execution_id TEXT NOT NULL, time TEXT NOT NULL,
        message TEXT NOT NULL, source TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS logs_by_execution ON logs(execution_id, id)",
    """CREATE TABLE IF NOT EXISTS deliveries(
        id INTEGER PRIMARY KEY AUTOINCREMENT, subscription TEXT NOT NULL, event TEXT NOT NULL,
        source TEXT, attempt INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL, due REAL
    )""",
    "CREATE INDEX IF NOT EXISTS deliveries_by_due ON deliveries(due) WHERE due IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS dead_letters(
        id INTEGER PRIMARY KEY AUTOINCREMENT, event TEXT NOT NULL, subscription TEXT NOT NULL,
        error TEXT NOT NULL, message TEXT NOT NULL, attempts INTEGER NOT NULL, time TEXT NOT NULL
    )""",
)


def _create_v1(connection: sqlite3.Connection) -> None:
    for statement in SCHEMA_V1:
        connection.execute(statement)


def _timers_hold_their_event(connection: sqlite3.Connection) -> None:
    """Version 2: a timer row holds the event it delivers (`payload`: its JSON) under the execution core's
    key (a durable timer's seq, `timeout`); release 0.1 keyed durable timers `t:<seq>` and kept a workflow
    timeout's limit (seconds) as the payload."""
    rows = connection.execute("SELECT execution_id, key, due, payload FROM timers").fetchall()
    for row in rows:
        due = datetime.fromtimestamp(row["due"], UTC)
        fires: HistoryEvent
        if row["key"] == core.TIMEOUT_TIMER_KEY:
            limit = timedelta(seconds=float(row["payload"] or 0))
            fires, key = core.timed_out(row["execution_id"], limit, due), row["key"]
        elif row["key"].startswith("t:"):
            seq = int(row["key"][2:])
            fires, key = TimerCompleted(seq=seq, timestamp=due), core.timer_key(seq)
        else:
            continue
        connection.execute(
            "UPDATE timers SET key = ?, payload = ? WHERE execution_id = ? AND key = ?",
            (key, fires.model_dump_json(), row["execution_id"], row["key"]),
        )


def _entities_table(connection: sqlite3.Connection) -> None:
    """Version 3: the entries of `ev.entity`, one row each (`sort` is '' for one-part keys), in key order."""
    connection.execute(
        """CREATE TABLE IF NOT EXISTS entities(
            entity TEXT NOT NULL, partition TEXT NOT NULL, sort TEXT NOT NULL,
            version INTEGER NOT NULL, value TEXT NOT NULL,
            PRIMARY KEY(entity, partition, sort)
        ) WITHOUT ROWID"""
    )


def _schedules_table(connection: sqlite3.Connection) -> None:
    """Version 4: each schedule's state (`core.schedules.ScheduleState` as JSON: paused, the fires handled,
    the last fire and execution, the skipped count) and `due`, when its next fire is (NULL while paused, or
    while no runtime serves it), which wakes the scheduler as a timer's does."""
    connection.execute(
        "CREATE TABLE IF NOT EXISTS schedules(name TEXT PRIMARY KEY, state TEXT NOT NULL, due REAL) WITHOUT ROWID"
    )
    connection.execute("CREATE INDEX IF NOT EXISTS schedules_by_due ON schedules(due) WHERE due IS NOT NULL")


def _outbox_table(connection: sqlite3.Connection) -> None:
    """Version 5 (version 4 is the schedules'; this one needs nothing of it): events published here and not
    yet appended to the shared event bus (`runtime/local/bus.py`); `id` is never reused, so it names the
    event on the bus together with the runtime's origin id."""
    connection.execute(
        """CREATE TABLE IF NOT EXISTS outbox(
            id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT, name TEXT NOT NULL, payload TEXT NOT NULL,
            time REAL NOT NULL
        )"""
    )


def _executions_by_workflow_in_order(connection: sqlite3.Connection) -> None:
    """Version 6: listing one workflow's executions without a status (or with several) reads them in start
    order from an index on `workflow` (its entries end with the rowid, which is start order), instead of
    sorting all of that workflow's executions for every page (measured: `python -m benchmarks --only
    scale_listing`)."""
    connection.execute("CREATE INDEX IF NOT EXISTS executions_by_workflow_in_order ON executions(workflow)")


@dataclass(frozen=True)
class Migration:
    version: int
    what: str
    apply: Callable[[sqlite3.Connection], None]


#: every schema change, in order; `Migration.version` is the `user_version` a database has after it
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the tables of release 0.1", _create_v1),
    Migration(2, "timers hold the event they deliver", _timers_hold_their_event),
    Migration(3, "entities", _entities_table),
    Migration(4, "schedules keep their state", _schedules_table),
    Migration(5, "the outbox of events for the shared bus", _outbox_table),
    Migration(6, "executions of a workflow listed in start order", _executions_by_workflow_in_order),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


class DatabaseLocked(EventualError):
    """Another process already runs a LocalRuntime on this database file."""

    status_code = 409


class NewerDatabase(EventualError):
    """The database was written by a later release, whose schema this one does not know."""


# ----------------------------------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class StepRow:
    """What a step of an execution without a cached instance reads about it."""

    workflow: str
    status: ExecutionStatus
    first_step_done: bool
    lineage: core.Lineage


@dataclass(frozen=True, slots=True)
class ActivityRow:
    """One activity call's current attempt (times are seconds since the epoch)."""

    execution_id: str
    seq: int
    name: str
    input: str
    options: str
    attempt: int
    status: str
    deadline: float | None
    heartbeat_deadline: float | None
    heartbeat_details: str | None

    @classmethod
    def of(cls, row: sqlite3.Row) -> ActivityRow:
        return cls(*(row[name] for name in _ACTIVITY_COLUMNS))


_ACTIVITY_COLUMNS = (
    "execution_id",
    "seq",
    "name",
    "input",
    "options",
    "attempt",
    "status",
    "deadline",
    "heartbeat_deadline",
    "heartbeat_details",
)
_ACTIVITY_SELECT = f"SELECT {', '.join(_ACTIVITY_COLUMNS)} FROM activities"
_EXECUTION_SELECT = (
    "SELECT id, workflow, status, input, result, error, message, start_time, end_time, parent FROM executions"
)


@dataclass(frozen=True, slots=True)
class Delivery:
    subscription: str
    event: dict[str, Any]
    attempt: int


# ------------------------------------------------------------------------------------------- database


class Database:
    """An open, locked, migrated SQLite database in WAL mode; used only from the runtime's own thread."""

    def __init__(self, path: str | os.PathLike[str], durability: str = "full") -> None:
        if durability not in DURABILITY:
            raise EventualError(f"durability must be one of {sorted(DURABILITY)}, got {durability!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file: IO[str] | None = self._lock()
        try:
            self.connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.connection.row_factory = sqlite3.Row
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute(f"PRAGMA synchronous={DURABILITY[durability]}")
            self.connection.execute("PRAGMA foreign_keys=OFF")
            self.connection.execute("PRAGMA busy_timeout=5000")
            self.migrate()
            self._reserve_wal()
        except BaseException:
            self.close()
            raise

    # -- schema ------------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        return int(self.connection.execute("PRAGMA user_version").fetchone()["user_version"])

    def migrate(self) -> None:
        """Apply the migrations this database lacks, each in its own transaction."""
        version = self.version
        if version > SCHEMA_VERSION:
            raise NewerDatabase(
                f"database {self.path} has schema version {version}, written by a later release of eventual-nb; "
                f"this one knows versions up to {SCHEMA_VERSION}: upgrade eventual-nb to open it"
            )
        for migration in MIGRATIONS:
            if migration.version <= version:
                continue
            with self.transaction():
                migration.apply(self.connection)
                self.connection.execute(f"PRAGMA user_version = {migration.version:d}")

    def _reserve_wal(self) -> None:
        """Grow the write-ahead log to its working size now, so commits overwrite it instead of appending.

        An fsync after an append also commits the file's new size to the filesystem journal: on the
        machines we measured that doubles the cost of a commit (about 0.5 ms against 0.23 ms). SQLite
        restarts the log from its beginning after each automatic checkpoint (every 1000 pages) but
        never shrinks it, so a log that already spans those pages is only ever overwritten. The pages are
        written by a transaction that spills to the log and is rolled back: nothing is committed and
        the database itself does not grow.
        """
        wal = self.path.with_name(self.path.name + "-wal")
        page_size = int(self.connection.execute("PRAGMA page_size").fetchone()["page_size"])
        pages = int(self.connection.execute("PRAGMA wal_autocheckpoint").fetchone()["wal_autocheckpoint"])
        wanted = page_size * (pages + pages // 10)
        if wal.exists() and wal.stat().st_size >= wanted:
            return
        cache_size = self.connection.execute("PRAGMA cache_size").fetchone()["cache_size"]
        self.connection.execute("PRAGMA cache_size=16")  # so the pages spill to the log at once
        try:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                self.connection.execute("CREATE TABLE wal_reserve(filler BLOB)")
                self.connection.execute("INSERT INTO wal_reserve VALUES (zeroblob(?))", (wanted,))
            finally:
                self.connection.execute("ROLLBACK")
        finally:
            self.connection.execute(f"PRAGMA cache_size={int(cache_size)}")

    # -- the lock ------------------------------------------------------------------------------------

    def _lock(self) -> IO[str]:
        try:
            import fcntl
        except ImportError:  # not POSIX (Windows)
            raise EventualError(
                "LocalRuntime needs POSIX file locks (the fcntl module), which this platform lacks; run it on "
                "Linux or macOS (on Windows: in WSL), or use ev.testing.TestEnvironment"
            ) from None
        lock_path = self.path.with_name(self.path.name + ".lock")
        # held open (and locked) for the runtime's lifetime, closed by `close()`: no `with` block fits
        handle = open(lock_path, "a+")  # noqa: SIM115
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "an unknown process"
            handle.close()
            raise DatabaseLocked(
                f"database {self.path} is in use by {holder}; stop that process or use another database path"
            ) from None
        handle.seek(0)
        handle.truncate()
        command = " ".join(sys.argv)[:200]
        handle.write(f"process {os.getpid()} on {socket.gethostname()} ({command})")
        handle.flush()
        return handle

    def close(self) -> None:
        connection = getattr(self, "connection", None)
        if connection is not None:
            connection.close()
        if self._lock_file is not None:
            import fcntl

            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # -- transactions --------------------------------------------------------------------------------

    def begin(self) -> None:
        self.connection.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.connection.execute("COMMIT")

    def rollback(self) -> None:
        self.connection.execute("ROLLBACK")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.begin()
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit()

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Inside a transaction: what the block wrote is undone if it raises (the exception goes on)."""
        self.connection.execute("SAVEPOINT request")
        try:
            yield
        except BaseException:
            self.connection.execute("ROLLBACK TO request")
            raise
        finally:
            self.connection.execute("RELEASE request")

    # -- meta ----------------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self.connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        self.connection.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- recovery and waking -------------------------------------------------------------------------

    def requeue_running(self, now: float) -> None:
        """Attempts and deliveries left 'running' by a process that stopped run again (at least once)."""
        self.connection.execute("UPDATE activities SET status = 'scheduled', due = ? WHERE status = 'running'", (now,))
        self.connection.execute("UPDATE deliveries SET status = 'scheduled', due = ? WHERE status = 'running'", (now,))

    def executions_with_inbox(self) -> set[str]:
        return {row["execution_id"] for row in self.connection.execute("SELECT DISTINCT execution_id FROM inbox")}

    def unstarted_executions(self) -> set[str]:
        """Executions in progress whose first step was never committed."""
        rows = self.connection.execute("SELECT id FROM executions WHERE status = 'IN_PROGRESS' AND first_step_done = 0")
        return {row["id"] for row in rows}

    def next_due(self) -> float | None:
        """The earliest `due` of any timer, attempt or delivery (None if nothing waits)."""
        row = self.connection.execute(
            "SELECT MIN(due) AS due FROM (SELECT MIN(due) AS due FROM timers "
            "UNION ALL SELECT MIN(due) FROM activities WHERE due IS NOT NULL "
            "UNION ALL SELECT MIN(due) FROM deliveries WHERE due IS NOT NULL "
            "UNION ALL SELECT MIN(due) FROM schedules WHERE due IS NOT NULL)"
        ).fetchone()
        return None if row["due"] is None else float(row["due"])

    # -- schedules -----------------------------------------------------------------------------------

    def schedule_states(self) -> dict[str, ScheduleState]:
        """Every stored schedule state by name (those of schedules no longer served included)."""
        rows = self.connection.execute("SELECT name, state FROM schedules")
        return {row["name"]: ScheduleState.model_validate_json(row["state"]) for row in rows}

    def schedule_state(self, name: str) -> ScheduleState | None:
        row = self.connection.execute("SELECT state FROM schedules WHERE name = ?", (name,)).fetchone()
        return None if row is None else ScheduleState.model_validate_json(row["state"])

    def save_schedule(self, name: str, state: ScheduleState, due: datetime | None) -> None:
        self.connection.execute(
            "INSERT OR REPLACE INTO schedules(name, state, due) VALUES (?, ?, ?)",
            (name, state.model_dump_json(), None if due is None else due.timestamp()),
        )

    def schedule_dues(self) -> dict[str, float | None]:
        return {row["name"]: row["due"] for row in self.connection.execute("SELECT name, due FROM schedules")}

    def set_schedule_due(self, name: str, due: datetime | None) -> None:
        self.connection.execute(
            "UPDATE schedules SET due = ? WHERE name = ?", (None if due is None else due.timestamp(), name)
        )

    def due_schedules(self, now: float) -> list[tuple[str, ScheduleState]]:
        rows = self.connection.execute("SELECT name, state FROM schedules WHERE due <= ? ORDER BY due, name", (now,))
        return [(row["name"], ScheduleState.model_validate_json(row["state"])) for row in rows]

    # -- executions ----------------------------------------------------------------------------------

    def input_hash_of(self, execution_id: str) -> str | None:
        row = self.connection.execute("SELECT input_hash FROM executions WHERE id = ?", (execution_id,)).fetchone()
        return None if row is None else str(row["input_hash"])

    def create_execution(
        self, started: WorkflowStarted, execution_id: str, digest: str, raw_input: str, lineage: core.Lineage
    ) -> None:
        """The execution's row and its first history event."""
        self.connection.execute(
            "INSERT INTO executions(id, workflow, status, input, input_hash, start_time, parent, parent_seq, service) "
            "VALUES (?, ?, 'IN_PROGRESS', ?, ?, ?, ?, ?, ?)",
            (
                execution_id,
                started.workflow,
                raw_input,
                digest,
                started.timestamp.isoformat(),
                lineage.parent,
                lineage.parent_seq,
                lineage.service,
            ),
        )
        self.connection.execute(
            "INSERT INTO history(execution_id, idx, event) VALUES (?, 0, ?)", (execution_id, started.model_dump_json())
        )

    def status_of(self, execution_id: str) -> ExecutionStatus | None:
        row = self.connection.execute("SELECT status FROM executions WHERE id = ?", (execution_id,)).fetchone()
        return None if row is None else ExecutionStatus(row["status"])

    def step_row(self, execution_id: str) -> StepRow | None:
        row = self.connection.execute(
            "SELECT workflow, status, first_step_done, parent, parent_seq, service FROM executions WHERE id = ?",
            (execution_id,),
        ).fetchone()
        if row is None:
            return None
        lineage = core.Lineage(row["service"], row["parent"], row["parent_seq"])
        return StepRow(row["workflow"], ExecutionStatus(row["status"]), bool(row["first_step_done"]), lineage)

    def mark_first_step_done(self, execution_id: str) -> None:
        self.connection.execute("UPDATE executions SET first_step_done = 1 WHERE id = ?", (execution_id,))

    def finish(self, action: core.Finish, result: str | None) -> None:
        """Record how the execution ended (`result`: its JSON) and drop its timers, attempts and inbox."""
        execution_id = action.execution_id
        self.connection.execute(
            "UPDATE executions SET status = ?, result = ?, error = ?, message = ?, end_time = ? WHERE id = ?",
            (action.status.value, result, action.error, action.message, action.end_time.isoformat(), execution_id),
        )
        self.connection.execute("DELETE FROM timers WHERE execution_id = ?", (execution_id,))
        self.connection.execute("DELETE FROM activities WHERE execution_id = ?", (execution_id,))

    def execution(self, execution_id: str) -> Execution | None:
        row = self.connection.execute(f"{_EXECUTION_SELECT} WHERE id = ?", (execution_id,)).fetchone()
        return None if row is None else _execution(row)

    def executions(
        self,
        workflow: str | None,
        statuses: Sequence[ExecutionStatus] | None,
        offset: int,
        limit: int,
        descending: bool,
    ) -> list[Execution]:
        """Executions in start order (`descending`: newest first), filtered, from `offset`, at most `limit`."""
        clauses, params = [], []
        if workflow is not None:
            clauses.append("workflow = ?")
            params.append(workflow)
        if statuses:
            clauses.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params.extend(ExecutionStatus(status).value for status in statuses)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "DESC" if descending else "ASC"
        rows = self.connection.execute(
            f"{_EXECUTION_SELECT} {where} ORDER BY rowid {order} LIMIT ? OFFSET ?", (*params, limit, offset)
        ).fetchall()
        return [_execution(row) for row in rows]

    # -- history, inbox, logs ------------------------------------------------------------------------

    def history(self, execution_id: str) -> list[HistoryEvent]:
        rows = self.connection.execute(
            "SELECT event FROM history WHERE execution_id = ? ORDER BY idx", (execution_id,)
        ).fetchall()
        return [EVENT_ADAPTER.validate_json(row["event"]) for row in rows]

    def append_history(self, execution_id: str, first: int, events: Sequence[HistoryEvent]) -> None:
        """`events` as the history entries `first`, `first + 1`, ... of the execution."""
        self.connection.executemany(
            "INSERT INTO history(execution_id, idx, event) VALUES (?, ?, ?)",
            [(execution_id, first + i, event.model_dump_json()) for i, event in enumerate(events)],
        )

    def add_to_inbox(self, events: Iterable[tuple[str, HistoryEvent]]) -> None:
        self.connection.executemany(
            "INSERT INTO inbox(execution_id, event) VALUES (?, ?)",
            [(execution_id, event.model_dump_json()) for execution_id, event in events],
        )

    def inbox(self, execution_id: str) -> tuple[list[HistoryEvent], int | None]:
        """The execution's waiting events, oldest first, and the id of the last (for `clear_inbox`)."""
        rows = self.connection.execute(
            "SELECT id, event FROM inbox WHERE execution_id = ? ORDER BY id", (execution_id,)
        ).fetchall()
        return [EVENT_ADAPTER.validate_json(row["event"]) for row in rows], (rows[-1]["id"] if rows else None)

    def clear_inbox(self, execution_id: str, up_to: int | None = None) -> None:
        """Delete the execution's waiting events (only up to id `up_to`, if given)."""
        if up_to is None:
            self.connection.execute("DELETE FROM inbox WHERE execution_id = ?", (execution_id,))
        else:
            self.connection.execute("DELETE FROM inbox WHERE execution_id = ? AND id <= ?", (execution_id, up_to))

    def add_logs(self, execution_id: str, entries: Iterable[LogEntry]) -> None:
        self.add_log_rows((execution_id, entry.time.isoformat(), entry.message, entry.source) for entry in entries)

    def add_log_rows(self, rows: Iterable[tuple[str, str, str, str]]) -> None:
        """Log lines as (execution id, ISO time, message, source)."""
        self.connection.executemany("INSERT INTO logs(execution_id, time, message, source) VALUES (?, ?, ?, ?)", rows)

    def logs(self, execution_id: str) -> list[LogEntry]:
        rows = self.connection.execute(
            "SELECT time, message, source FROM logs WHERE execution_id = ? ORDER BY id", (execution_id,)
        ).fetchall()
        return [
            LogEntry(time=datetime.fromisoformat(row["time"]), message=row["message"], source=row["source"])
            for row in rows
        ]

    def remember_signal(self, execution_id: str, signal_id: str) -> bool:
        """True the first time `signal_id` reaches the execution."""
        inserted = self.connection.execute(
            "INSERT OR IGNORE INTO signal_ids(execution_id, id) VALUES (?, ?)", (execution_id, signal_id)
        )
        return inserted.rowcount > 0

    # -- timers --------------------------------------------------------------------------------------

    def arm_timer(self, action: core.ArmTimer) -> float:
        """Store the timer (replacing one with its key); returns its due time in seconds."""
        due = action.due.timestamp()
        self.connection.execute(
            "INSERT OR REPLACE INTO timers(execution_id, key, due, payload) VALUES (?, ?, ?, ?)",
            (action.execution_id, action.key, due, action.fires.model_dump_json()),
        )
        return due

    def disarm_timer(self, execution_id: str, key: str) -> None:
        self.connection.execute("DELETE FROM timers WHERE execution_id = ? AND key = ?", (execution_id, key))

    def take_due_timers(self, now: float) -> list[tuple[str, HistoryEvent]]:
        """Remove the timers due by `now`; returns (execution id, the event it delivers) for each."""
        rows = self.connection.execute(
            "SELECT execution_id, key, payload FROM timers WHERE due <= ?", (now,)
        ).fetchall()
        for row in rows:
            self.disarm_timer(row["execution_id"], row["key"])
        return [(row["execution_id"], EVENT_ADAPTER.validate_json(row["payload"])) for row in rows]

    # -- activities ----------------------------------------------------------------------------------

    def add_activity(
        self, action: core.StartAttempt, input_text: str, options_text: str, moments: tuple[float | None, ...]
    ) -> bool:
        """The call's row with its first attempt running (`moments`: deadline, heartbeat deadline, due);
        False if the call has one already."""
        deadline, heartbeat_deadline, due = moments
        inserted = self.connection.execute(
            "INSERT OR IGNORE INTO activities(execution_id, seq, name, input, options, attempt, status, due, deadline, "
            "heartbeat_deadline, runs) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, 1)",
            (
                action.execution_id,
                action.seq,
                action.name,
                input_text,
                options_text,
                action.attempt,
                due,
                deadline,
                heartbeat_deadline,
            ),
        )
        return inserted.rowcount > 0

    def due_activities(self, now: float) -> list[ActivityRow]:
        rows = self.connection.execute(f"{_ACTIVITY_SELECT} WHERE due IS NOT NULL AND due <= ?", (now,)).fetchall()
        return [ActivityRow.of(row) for row in rows]

    def activity(self, execution_id: str, seq: int) -> ActivityRow | None:
        row = self.connection.execute(
            f"{_ACTIVITY_SELECT} WHERE execution_id = ? AND seq = ?", (execution_id, seq)
        ).fetchone()
        return None if row is None else ActivityRow.of(row)

    def run_attempt(self, execution_id: str, seq: int, attempt: int, moments: tuple[float | None, ...]) -> None:
        """Attempt `attempt` of the call runs now (`moments`: deadline, heartbeat deadline, due)."""
        deadline, heartbeat_deadline, due = moments
        self.connection.execute(
            "UPDATE activities SET attempt = ?, status = 'running', deadline = ?, heartbeat_deadline = ?, "
            "due = ?, runs = runs + 1 WHERE execution_id = ? AND seq = ?",
            (attempt, deadline, heartbeat_deadline, due, execution_id, seq),
        )

    def settle_current(self, execution_id: str, seq: int, attempt: int) -> bool:
        """Delete the call's row if `attempt` is its current one and unsettled; True if it was."""
        deleted = self.connection.execute(
            "DELETE FROM activities WHERE execution_id = ? AND seq = ? AND attempt = ? "
            "AND status IN ('running', 'async')",
            (execution_id, seq, attempt),
        )
        return deleted.rowcount > 0

    def delete_activity(self, execution_id: str, seq: int) -> None:
        self.connection.execute("DELETE FROM activities WHERE execution_id = ? AND seq = ?", (execution_id, seq))

    def retry_activity(self, execution_id: str, seq: int, due: float) -> None:
        self.connection.execute(
            "UPDATE activities SET status = 'scheduled', due = ?, deadline = NULL, heartbeat_deadline = NULL "
            "WHERE execution_id = ? AND seq = ?",
            (due, execution_id, seq),
        )

    def await_token(self, execution_id: str, seq: int, heartbeat_deadline: float | None, due: float | None) -> None:
        self.connection.execute(
            "UPDATE activities SET status = 'async', heartbeat_deadline = ?, due = ? WHERE execution_id = ? AND seq = ?",
            (heartbeat_deadline, due, execution_id, seq),
        )

    def heartbeat_target(self, execution_id: str, seq: int) -> tuple[ActivityRow, ExecutionStatus] | None:
        """The call's current attempt and the status of its execution."""
        row = self.connection.execute(
            f"SELECT {', '.join('a.' + name for name in _ACTIVITY_COLUMNS)}, e.status AS execution_status "
            "FROM activities a JOIN executions e ON e.id = a.execution_id WHERE a.execution_id = ? AND a.seq = ?",
            (execution_id, seq),
        ).fetchone()
        return None if row is None else (ActivityRow.of(row), ExecutionStatus(row["execution_status"]))

    def record_heartbeat(
        self, execution_id: str, seq: int, heartbeat_deadline: float | None, due: float | None, details: str | None
    ) -> None:
        self.connection.execute(
            "UPDATE activities SET heartbeat_deadline = ?, due = ?, heartbeat_details = COALESCE(?, heartbeat_details) "
            "WHERE execution_id = ? AND seq = ?",
            (heartbeat_deadline, due, details, execution_id, seq),
        )

    # -- deliveries ----------------------------------------------------------------------------------

    def add_delivery(self, subscription: str, event: str, source: str | None, due: float) -> None:
        self.connection.execute(
            "INSERT INTO deliveries(subscription, event, source, status, due) VALUES (?, ?, ?, 'scheduled', ?)",
            (subscription, event, source, due),
        )

    def start_due_deliveries(self, now: float) -> list[int]:
        """Mark the deliveries due by `now` running (their next attempt); returns their ids."""
        rows = self.connection.execute(
            "SELECT id FROM deliveries WHERE status = 'scheduled' AND due IS NOT NULL AND due <= ?", (now,)
        ).fetchall()
        ids = [int(row["id"]) for row in rows]
        self.connection.executemany(
            "UPDATE deliveries SET status = 'running', attempt = attempt + 1, due = NULL WHERE id = ?",
            [(delivery_id,) for delivery_id in ids],
        )
        return ids

    def delivery(self, delivery_id: int) -> Delivery | None:
        row = self.connection.execute(
            "SELECT subscription, event, attempt FROM deliveries WHERE id = ?", (delivery_id,)
        ).fetchone()
        return None if row is None else Delivery(row["subscription"], json.loads(row["event"]), row["attempt"])

    def delete_delivery(self, delivery_id: int) -> None:
        self.connection.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))

    def retry_delivery(self, delivery_id: int, due: float) -> None:
        self.connection.execute("UPDATE deliveries SET status = 'scheduled', due = ? WHERE id = ?", (due, delivery_id))

    def dead_letter(self, delivery_id: int, letter: DeadLetter) -> None:
        """Replace the delivery by its dead letter."""
        self.delete_delivery(delivery_id)
        self.connection.execute(
            "INSERT INTO dead_letters(event, subscription, error, message, attempts, time) VALUES (?, ?, ?, ?, ?, ?)",
            (
                dumps(letter.event),
                letter.subscription,
                letter.error,
                letter.message,
                letter.attempts,
                letter.time.isoformat(),
            ),
        )

    def dead_letters(self) -> list[DeadLetter]:
        rows = self.connection.execute(
            "SELECT event, subscription, error, message, attempts, time FROM dead_letters ORDER BY id"
        ).fetchall()
        return [
            DeadLetter(
                event=json.loads(row["event"]),
                subscription=row["subscription"],
                error=row["error"],
                message=row["message"],
                attempts=row["attempts"],
                time=datetime.fromisoformat(row["time"]),
            )
            for row in rows
        ]

    # -- the bus's outbox ----------------------------------------------------------------------------

    def add_outbox(self, source: str | None, name: str, payload: str, time: float) -> None:
        self.connection.execute(
            "INSERT INTO outbox(source, name, payload, time) VALUES (?, ?, ?, ?)", (source, name, payload, time)
        )

    def outbox(self, after: int, limit: int) -> list[Outgoing]:
        """The oldest `limit` outbox rows after id `after` (events waiting to be appended to the bus)."""
        rows = self.connection.execute(
            "SELECT id, source, name, payload, time FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
        ).fetchall()
        return [Outgoing(row["id"], row["source"], row["name"], row["payload"], row["time"]) for row in rows]

    def delete_outbox(self, up_to: int) -> None:
        """Forget the outbox rows up to id `up_to` (they are on the bus)."""
        self.connection.execute("DELETE FROM outbox WHERE id <= ?", (up_to,))

    # -- entities ------------------------------------------------------------------------------------

    def entity(self, key: EntityKey) -> StoredEntry | None:
        row = self.connection.execute(
            "SELECT version, value FROM entities WHERE entity = ? AND partition = ? AND sort = ?",
            (key.entity, key.partition, key.sort),
        ).fetchone()
        return None if row is None else StoredEntry(row["value"], row["version"])

    def entity_version(self, key: EntityKey) -> int:
        """The entry's version, 0 if there is none."""
        entry = self.entity(key)
        return 0 if entry is None else entry.version

    def entity_page(
        self, entity: str, partition: str, prefix: str | None, after: str | None, limit: int
    ) -> list[tuple[str, StoredEntry]]:
        """Up to `limit` entries of a partition in sort-key order, after `after`, whose sort key starts with
        `prefix`: those are contiguous from the first sort key >= `prefix`, so the scan stops at the first
        that does not (no LIKE, whose case folding and wildcards would need escaping)."""
        rows = self.connection.execute(
            "SELECT sort, version, value FROM entities WHERE entity = ? AND partition = ? AND sort >= ? AND sort > ? "
            "ORDER BY sort LIMIT ?",
            (entity, partition, prefix or "", after if after is not None else "", limit),
        )
        found: list[tuple[str, StoredEntry]] = []
        for row in rows:
            if prefix and not row["sort"].startswith(prefix):
                break
            found.append((row["sort"], StoredEntry(row["value"], row["version"])))
        return found

    def entity_count(self, entity: str) -> int:
        row = self.connection.execute("SELECT COUNT(*) AS entries FROM entities WHERE entity = ?", (entity,))
        return int(row.fetchone()["entries"])

    def write_entities(self, writes: Sequence[Write], versions: Sequence[int | None]) -> None:
        """Store each put at its new version and remove each deleted entry (checks write nothing)."""
        for write, version in zip(writes, versions, strict=True):
            key = (write.key.entity, write.key.partition, write.key.sort)
            if write.kind == "put":
                self.connection.execute(
                    "INSERT OR REPLACE INTO entities(entity, partition, sort, version, value) VALUES (?, ?, ?, ?, ?)",
                    (*key, version, write.value),
                )
            elif write.kind == "delete":
                self.connection.execute("DELETE FROM entities WHERE entity = ? AND partition = ? AND sort = ?", key)


def _execution(row: sqlite3.Row) -> Execution:
    return Execution(
        id=row["id"],
        workflow=row["workflow"],
        status=ExecutionStatus(row["status"]),
        input=None if row["input"] is None else json.loads(row["input"]),
        result=None if row["result"] is None else json.loads(row["result"]),
        error=row["error"],
        message=row["message"],
        start_time=datetime.fromisoformat(row["start_time"]),
        end_time=None if row["end_time"] is None else datetime.fromisoformat(row["end_time"]),
        parent=row["parent"],
    )


#: one encoder for every row: `json.dumps` with options builds a new encoder per call
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(value: object) -> str:
    return _ENCODER.encode(value)
