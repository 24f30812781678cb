"""The local event bus: one SQLite file that the LocalRuntimes of one machine share (`.eventual/bus.db`).

Services compose across processes through it: every LocalRuntime appends what its services publish, and
each reads the events of other processes whose source one of its subscriptions names
(`@ev.subscription(..., source="bank")`). `Bus` holds all of the bus file's SQL; `Doorbell` wakes the
readers.

What is promised, and how
-------------------------
* **Nothing published is lost.** A runtime's database and the bus are two files, and SQLite commits
  atomically only within one file (in WAL mode not even across ATTACHed ones), so publishing goes through
  an outbox: the event is first an `outbox` row of the runtime's own database, written in the very
  transaction that records the publish (an API call's, or the workflow turn whose `Publish` action it
  is). Right after that transaction commits, and before `publish` returns, the runtime appends its outbox
  rows to the bus in one bus transaction and rings the doorbell; the forwarded rows are deleted in its
  next transaction. Forwarding is idempotent: a bus row is unique by `(origin, origin_seq)`, the runtime's
  random origin id and the outbox row's id, so rows forwarded again after a crash (between the bus commit
  and the outbox delete) are ignored. A runtime killed between its commit and the forward forwards at its
  next start.
* **At least once, never before commit.** A bus row's `seq` is assigned inside the appending transaction,
  and SQLite lets one writer at a time commit, so readers see `seq`s in commit order with no gaps still to
  be filled: a reader that has consumed everything up to `seq` N can never later find an uncommitted row
  below N. Each runtime keeps its read position in its own database and moves it in the same
  transaction that turns the events read into delivery rows, so a crash of the reader re-reads at most what
  it had not committed, and a crash of the publisher loses nothing that was committed. From the delivery
  rows on, retries and dead letters are the runtime's usual per-subscription ones.
* **Where reading starts.** A runtime that opens a bus for the first time starts at its end, as an
  EventBridge rule sees only events put after it exists; from then on it reads everything after its
  position, including what was published while it was stopped.
* **Retention.** Entries older than the retention period (default 7 days) are deleted by whichever runtime
  opens or writes the bus once an hour at most; a runtime stopped for longer misses what was pruned (it
  logs how many events it missed).

Waking without polling
----------------------
`Doorbell`: each reading runtime creates a named pipe (FIFO) in `<bus>-wake/` and watches it with the
event loop's `add_reader` (epoll/kqueue), so an idle runtime sleeps in the kernel and uses no CPU. After
each append the writer opens every other FIFO there non-blocking, writes one byte and closes it: the
readers wake within a millisecond or so. A FIFO is created under a temporary name, opened, then renamed
into place, so a writer never finds one without a reader except when its runtime is gone (its process
died: the kernel closed the pipe); the writer then gets `ENXIO` and deletes it. A FIFO rather than a
Unix-domain socket, because a socket's path is limited to about 100 bytes, which project directories
easily exceed. A ring can still be lost (a writer killed between its bus commit and its ring), so a runtime that reads
the bus (one serving a subscription to another service's events) also looks at it every `CHECK_SECONDS`
while idle: one indexed query, which costs no measurable CPU; the others never wake to look.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import sqlite3
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from eventual_nb.errors import EventualError

#: how long bus entries are kept by default
DEFAULT_RETENTION = timedelta(days=7)
#: how often an idle reader looks at the bus anyway, for a ring that was lost
CHECK_SECONDS = 5.0
#: pruning runs at most this often (seconds)
PRUNE_EVERY_SECONDS = 3600.0
#: the bus schema's version (`PRAGMA user_version`)
BUS_SCHEMA_VERSION = 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS events(
        seq INTEGER PRIMARY KEY AUTOINCREMENT, origin TEXT NOT NULL, origin_seq INTEGER NOT NULL,
        source TEXT, name TEXT NOT NULL, payload TEXT NOT NULL, time REAL NOT NULL,
        UNIQUE(origin, origin_seq)
    )""",
    "CREATE INDEX IF NOT EXISTS events_by_time ON events(time)",
)
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An outbox row of a runtime's database: an event waiting to be appended to the bus."""

    id: int
    source: str | None
    name: str
    payload: str
    time: float


@dataclass(frozen=True, slots=True)
class BusEntry:
    """One event on the bus (`time`: seconds since the epoch, when it was published)."""

    seq: int
    origin: str
    source: str | None
    name: str
    payload: str
    time: float

    def envelope(self) -> dict[str, Any]:
        """`{"name": ..., "event": {...}}`, the form events travel in."""
        return {"name": self.name, "event": json.loads(self.payload)}


class Bus:
    """An open bus file (created if missing). Any number of processes open one; SQLite serialises writers."""

    def __init__(self, path: str | os.PathLike[str], durability: str = "full") -> None:
        if durability not in _SYNCHRONOUS:
            raise EventualError(f"durability must be one of {sorted(_SYNCHRONOUS)}, got {durability!r}")
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise EventualError(f"cannot open the event bus {self.path}: {exc}") from None
        try:
            self.connection.execute("PRAGMA busy_timeout=5000")
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute(f"PRAGMA synchronous={_SYNCHRONOUS[durability]}")
            self.id = self._prepare()
        except sqlite3.Error as exc:
            self.connection.close()
            raise EventualError(f"cannot open the event bus {self.path}: {type(exc).__name__}: {exc}") from None
        except BaseException:
            self.connection.close()
            raise

    def _prepare(self) -> str:
        """Create the schema if missing (in one transaction, so two processes opening a new file agree) and
        return the bus's id, which tells a runtime's read position apart from one in a recreated file."""
        connection = self.connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = int(connection.execute("PRAGMA user_version").fetchone()[0])
            if version > BUS_SCHEMA_VERSION:
                raise EventualError(
                    f"event bus {self.path} has schema version {version}, written by a later release of eventual-nb; "
                    f"this one knows version {BUS_SCHEMA_VERSION}: upgrade eventual-nb, or use another --bus"
                )
            for statement in _SCHEMA:
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {BUS_SCHEMA_VERSION:d}")
            connection.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('id', ?)", (secrets.token_hex(8),))
            bus_id = str(connection.execute("SELECT value FROM meta WHERE key = 'id'").fetchone()[0])
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return bus_id

    def close(self) -> None:
        self.connection.close()

    def append(self, origin: str, rows: Sequence[Outgoing]) -> None:
        """Append outbox rows of runtime `origin` in one transaction; rows appended before are ignored."""
        with self._transaction():
            self.connection.executemany(
                "INSERT OR IGNORE INTO events(origin, origin_seq, source, name, payload, time) VALUES (?, ?, ?, ?, ?, ?)",
                [(origin, row.id, row.source, row.name, row.payload, row.time) for row in rows],
            )

    def after(self, position: int, limit: int) -> list[BusEntry]:
        """Up to `limit` committed entries after `seq` `position`, oldest first."""
        rows = self.connection.execute(
            "SELECT seq, origin, source, name, payload, time FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (position, limit),
        ).fetchall()
        return [BusEntry(*row) for row in rows]

    def end(self) -> int:
        """The last `seq` ever assigned (0 for a new bus): where a new reader starts."""
        row = self.connection.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return 0 if row is None else int(row[0])

    def first(self) -> int | None:
        """The oldest `seq` still kept (None if the bus is empty)."""
        row = self.connection.execute("SELECT MIN(seq) FROM events").fetchone()
        return None if row[0] is None else int(row[0])

    def prune(self, before: float) -> int:
        """Delete the entries published before `before` (seconds since the epoch); returns how many."""
        with self._transaction():
            deleted = self.connection.execute("DELETE FROM events WHERE time < ?", (before,))
        return int(deleted.rowcount)

    def recent(self, limit: int, source: str | None = None, name: str | None = None) -> list[BusEntry]:
        """The newest `limit` entries (of `source`, named `name`, when given), newest first."""
        clauses, params = [], []
        for column, value in (("source", source), ("name", name)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.connection.execute(
            f"SELECT seq, origin, source, name, payload, time FROM events {where} ORDER BY seq DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [BusEntry(*row) for row in rows]

    @contextlib.contextmanager
    def _transaction(self) -> Any:
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")


def default_bus_path(database: str | os.PathLike[str]) -> Path:
    """`bus.db` beside a runtime's database: runtimes whose databases share a directory share a bus."""
    return Path(database).parent / "bus.db"


class Doorbell:
    """Cross-process wake-ups for one bus (see the module docstring): a FIFO per listening runtime."""

    def __init__(self, bus_path: str | os.PathLike[str]) -> None:
        self.directory = Path(os.fspath(bus_path) + "-wake")
        self._fifo: Path | None = None
        self._fds: tuple[int, int] | None = None
        self._loop: Any = None

    def listen(self, loop: Any, on_ring: Callable[[], None]) -> None:
        """Call `on_ring()` on `loop` whenever another runtime rings (several rings may wake it once)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        temporary = self.directory / f"{name}.tmp"
        os.mkfifo(temporary, 0o600)
        try:
            reader = os.open(temporary, os.O_RDONLY | os.O_NONBLOCK)
            # our own writer end keeps the pipe from reading as closed (EOF, readable forever) when no one else
            # has it open; it also makes `ENXIO` mean "its runtime is gone" to those who ring
            keeper = os.open(temporary, os.O_WRONLY | os.O_NONBLOCK)
            fifo = self.directory / f"{name}.fifo"
            os.rename(temporary, fifo)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._fifo, self._fds, self._loop = fifo, (reader, keeper), loop

        def readable() -> None:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while os.read(reader, 4096):
                    pass
            on_ring()

        loop.add_reader(reader, readable)

    def ring(self) -> None:
        """Wake every other listening runtime; FIFOs left by dead processes are removed."""
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return
        for entry in entries:
            path = Path(entry.path)
            if path.suffix != ".fifo" or path == self._fifo:
                continue
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no reader: its process is gone
                    with contextlib.suppress(OSError):
                        if stat.S_ISFIFO(os.lstat(path).st_mode):
                            os.unlink(path)
                continue
            try:
                os.write(fd, b"\x01")
            except OSError:  # full (it has rings waiting already) or just closed: either way nothing to do
                pass
            finally:
                os.close(fd)

    def close(self) -> None:
        if self._fds is not None:
            reader, keeper = self._fds
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(reader)
            os.close(reader)
            os.close(keeper)
            self._fds = None
        if self._fifo is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._fifo)
            self._fifo = None
