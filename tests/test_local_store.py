"""The LocalRuntime's database across releases: schema versions, migrations, and the lock's platform needs.

tests/fixtures/state_v1/state.db was written by release 0.1 (commit eb99dcb, by the script next to it) and
holds executions in flight; it opens here, is migrated, and they complete.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

import eventual_nb as ev
from eventual_nb.runtime.local.store import SCHEMA_VERSION, NewerDatabase
from tests.fixtures.state_v1 import inflight

SERVICE = inflight.SERVICE
FIXTURE = Path(__file__).parent / "fixtures" / "state_v1" / "state.db"
WAIT = 10


def user_version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return int(connection.execute("PRAGMA user_version").fetchone()[0])


def timer_rows(path: Path) -> list[tuple[str, str, str | None]]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return connection.execute("SELECT execution_id, key, payload FROM timers ORDER BY execution_id").fetchall()


@pytest.fixture
def old_database(tmp_path: Path) -> Path:
    """A copy of the release-0.1 database (the fixture itself is never written)."""
    path = tmp_path / "state.db"
    shutil.copyfile(FIXTURE, path)
    return path


def test_the_fixture_is_a_database_of_release_0_1(old_database: Path) -> None:
    """What the migration test starts from: no schema version, 0.1's timer rows (key `t:<seq>`, no event)."""
    assert user_version(old_database) == 0
    assert timer_rows(old_database) == [("naps/timer", "t:0", None), ("outlived/timeout", "timeout", "20.0")]


async def test_a_database_of_release_0_1_opens_migrated_and_its_executions_complete(old_database: Path) -> None:
    inflight.RELEASE["open"] = True
    inflight.STARTED.clear()
    try:
        async with ev.LocalRuntime(old_database, service=SERVICE) as rt:
            assert user_version(old_database) == SCHEMA_VERSION
            await rt.send_signal("awaits_go/signal", "go", {"from": "the test"})
            results = {
                execution_id: await rt.wait_for_execution(execution_id, WAIT)
                for execution_id in ("naps/timer", "awaits_go/signal", "doubles/activity", "outlived/timeout")
            }
            histories = {execution_id: await rt.get_execution_history(execution_id) for execution_id in results}
    finally:
        inflight.RELEASE["open"] = False
    assert {execution_id: (found.status, found.result) for execution_id, found in results.items()} == {
        "naps/timer": (ev.ExecutionStatus.SUCCEEDED, "woke"),  # its timer was long due
        "awaits_go/signal": (ev.ExecutionStatus.SUCCEEDED, {"from": "the test"}),
        "doubles/activity": (ev.ExecutionStatus.SUCCEEDED, 41),  # the attempt left running ran again
        "outlived/timeout": (ev.ExecutionStatus.FAILED, None),
    }
    timed_out = results["outlived/timeout"]
    assert (timed_out.error, timed_out.message) == (
        "WorkflowTimeout",
        "execution 'outlived/timeout' exceeded its timeout of 20s",
    )
    assert inflight.STARTED == ["doubles/activity"]
    assert [event.type for event in histories["naps/timer"]] == [
        "WorkflowStarted",
        "TimerScheduled",
        "TimerCompleted",
        "WorkflowSucceeded",
    ]
    assert [event.type for event in histories["outlived/timeout"]] == ["WorkflowStarted", "WorkflowFailed"]
    for history in histories.values():
        steps = Counter((event.type, event.seq) for event in history if event.seq is not None)
        assert all(count == 1 for count in steps.values()), steps
        assert ev.testing.replay(SERVICE.workflows[history[0].workflow], history) == []
    assert timer_rows(old_database) == []


async def test_a_new_database_has_the_current_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with ev.LocalRuntime(path, service=SERVICE) as rt:
        handle = await inflight.naps.start(name="fresh")
        assert (await rt.get_execution(handle.id)).status == ev.ExecutionStatus.IN_PROGRESS
    assert user_version(path) == SCHEMA_VERSION
    [(execution_id, key, payload)] = timer_rows(path)
    assert (execution_id, key) == ("naps/fresh", "0")
    assert payload is not None
    assert '"type":"TimerCompleted"' in payload
    async with ev.LocalRuntime(path, service=SERVICE):  # opening it again changes nothing
        assert user_version(path) == SCHEMA_VERSION


async def test_a_database_of_a_later_release_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with ev.LocalRuntime(path, service=SERVICE):
        pass
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(NewerDatabase) as info:
        async with ev.LocalRuntime(path, service=SERVICE):
            pass
    message = str(info.value)
    assert str(path) in message
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"versions up to {SCHEMA_VERSION}" in message
    assert user_version(path) == SCHEMA_VERSION + 1
    with contextlib.closing(sqlite3.connect(path)) as connection:  # nor did it keep the file locked
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    async with ev.LocalRuntime(path, service=SERVICE):
        pass


#: run in a fresh interpreter where `import fcntl` fails, as on Windows
WITHOUT_FCNTL = textwrap.dedent(
    """
    import asyncio, sys

    class NoFcntl:
        def find_spec(self, name, path=None, target=None):
            if name == "fcntl":
                raise ModuleNotFoundError("No module named 'fcntl'", name="fcntl")
            return None

    sys.meta_path.insert(0, NoFcntl())
    sys.modules.pop("fcntl", None)

    import eventual_nb as ev

    service = ev.Service("no-fcntl")

    @ev.workflow
    async def hello(name: str) -> str:
        return f"hello {name}"

    async def main():
        async with ev.testing.TestEnvironment(service=service):
            print(await hello("windows"))
        try:
            async with ev.LocalRuntime(sys.argv[1], service=service):
                pass
        except ev.EventualError as exc:
            print(f"{type(exc).__name__}: {exc}")

    asyncio.run(main())
    """
)


def test_eventual_nb_imports_and_runs_where_fcntl_does_not_exist(tmp_path: Path) -> None:
    """`import eventual_nb` needs no fcntl (the lock imports it when a database is opened); a LocalRuntime
    there says plainly why it cannot lock its database."""
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_FCNTL, str(tmp_path / "state.db")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "hello windows"
    assert lines[1].startswith("EventualError: LocalRuntime needs POSIX file locks (the fcntl module)")
    assert not (tmp_path / "state.db").exists()


@pytest.mark.parametrize(
    "statuses",
    [None, [ev.ExecutionStatus.SUCCEEDED], [ev.ExecutionStatus.SUCCEEDED, ev.ExecutionStatus.FAILED]],
    ids=["no status", "one status", "two statuses"],
)
async def test_a_workflows_executions_are_listed_from_an_index_in_start_order(
    tmp_path: Path, statuses: list | None
) -> None:
    """A page of one workflow's executions is read from an index in the order of the page: no sort of every
    execution of that workflow (which grew with the number stored: 6 ms a page at 100,000)."""
    statements: list[str] = []
    async with ev.LocalRuntime(tmp_path / "state.db") as runtime:
        runtime._database.connection.set_trace_callback(statements.append)
        await runtime.list_executions(workflow="report", statuses=statuses, max_results=10)
        runtime._database.connection.set_trace_callback(None)
        (listing,) = [statement for statement in statements if "ORDER BY rowid" in statement]
        plan = [row[3] for row in runtime._database.connection.execute(f"EXPLAIN QUERY PLAN {listing}")]
    assert any(step.startswith("SEARCH executions USING INDEX") for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan
