"""Entities (`ev.entity`, `ev.transact`): one behavioural suite for every runtime, then what only one promises.

Every behaviour runs on each runtime through the `rt` fixture: a TestEnvironment (memory), a LocalRuntime on
a fresh SQLite file, and `ev.aws.AwsRuntime` over a stack deployed into moto's server on 127.0.0.1 (its
entities table declared by the exported template; the stack's real functions driven in the background by a
`Harness`, tests/aws_rig.py). The assertions are the same for all three.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

import eventual_nb as ev
from eventual_nb.errors import EntityNotFound, InvalidEntityValue, InvalidPageToken, error_from_json
from eventual_nb.runtime.entity_store import EntityKey
from eventual_nb.runtime.local.store import MIGRATIONS, SCHEMA_VERSION
from tests import aws_support
from tests.aws_rig import aws_stack_runtime
from tests.kernel_support import error_of, run_notebook, text_of
from tests.server_support import run_server

SERVICE = ev.Service("tests-entities")

# the AWS leg's moto server (module-scoped, started only when an "aws" test asks for it) and credentials
moto_endpoint = aws_support.moto_endpoint
dummy_credentials = aws_support.dummy_credentials


class Account(BaseModel):
    id: str
    balance: int = 0


class Line(BaseModel):
    account: str
    at: str
    text: str = ""


class Blob(BaseModel):
    id: str
    data: str


accounts = ev.entity("accounts", Account, key="id", service=SERVICE)
lines = ev.entity("lines", Line, key=("account", "at"), service=SERVICE)
blobs = ev.entity("blobs", Blob, key="id", service=SERVICE)


@ev.activity
async def deposit(account_id: str, amount: int) -> int:
    """Read, then put with the version read, retrying on a conflict: the pattern entities are made for."""
    while True:
        entry = await accounts.get_entry(account_id)
        current = entry.value if entry is not None else Account(id=account_id)
        try:
            return await accounts.put(
                current.model_copy(update={"balance": current.balance + amount}),
                expected_version=entry.version if entry is not None else 0,
            )
        except ev.VersionConflict:
            continue


@ev.workflow
async def deposit_twice(account_id: str) -> int:
    await deposit(account_id, 5)
    return await deposit(account_id, 7)


@ev.workflow
async def reads_an_entity_itself(account_id: str) -> Any:
    return await accounts.get(account_id)


# ------------------------------------------------------------------------------------------ runtimes


@contextlib.asynccontextmanager
async def open_runtime(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if kind == "test":
        async with ev.testing.TestEnvironment(service=SERVICE) as env:
            yield env
    elif kind == "local":
        async with ev.LocalRuntime(tmp_path / "state.db", service=SERVICE) as runtime:
            yield runtime
    elif kind == "aws":
        request.getfixturevalue("dummy_credentials")
        async with aws_stack_runtime(request.getfixturevalue("moto_endpoint"), SERVICE) as stack:
            yield stack.runtime
    else:
        raise AssertionError(kind)


@pytest.fixture(params=["test", "local", "aws"])
async def rt(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    async with open_runtime(request.param, request, tmp_path) as runtime:
        yield runtime


# ------------------------------------------------------------------------------------------ versions


async def test_put_returns_the_new_version_and_get_entry_reads_it(rt: Any) -> None:
    assert await accounts.get("a1") is None
    assert await accounts.get_entry("a1") is None
    assert await accounts.put(Account(id="a1", balance=10)) == 1
    assert await accounts.put({"id": "a1", "balance": 20}) == 2
    entry = await accounts.get_entry("a1")
    assert entry is not None
    assert (entry.value, entry.version) == (Account(id="a1", balance=20), 2)
    assert await accounts.get("a1") == Account(id="a1", balance=20)
    assert await accounts.put(Account(id="a1", balance=30), expected_version=2) == 3


async def test_a_put_with_another_version_is_a_conflict_that_writes_nothing(rt: Any) -> None:
    await accounts.put(Account(id="a2", balance=1))
    await accounts.put(Account(id="a2", balance=2))
    with pytest.raises(ev.VersionConflict) as conflict:
        await accounts.put(Account(id="a2", balance=99), expected_version=1)
    error = conflict.value
    assert (error.entity, error.key, error.expected_version, error.actual_version) == ("accounts", "a2", 1, 2)
    assert (error.expected, error.actual) == (1, 2)
    assert "expected version 1" in error.message
    assert "version 2" in error.message
    assert await accounts.get_entry("a2") == ev.Entry(Account(id="a2", balance=2), 2)
    rebuilt = error_from_json(error.to_json())  # what a ServiceClient raises from the server's answer
    assert isinstance(rebuilt, ev.VersionConflict)
    assert (rebuilt.key, rebuilt.actual_version) == ("a2", 2)


async def test_expected_version_zero_creates_only(rt: Any) -> None:
    assert await accounts.put(Account(id="a3"), expected_version=0) == 1
    with pytest.raises(ev.VersionConflict) as conflict:
        await accounts.put(Account(id="a3", balance=5), expected_version=0)
    assert (conflict.value.expected_version, conflict.value.actual_version) == (0, 1)
    assert "already exists" in conflict.value.message
    assert await accounts.get("a3") == Account(id="a3")
    with pytest.raises(ev.VersionConflict) as missing:
        await accounts.put(Account(id="nobody"), expected_version=4)
    assert (missing.value.actual_version, "does not exist" in missing.value.message) == (0, True)
    assert await accounts.get("nobody") is None


async def test_delete_with_a_version_deletes_only_that_version(rt: Any) -> None:
    await accounts.put(Account(id="a4"))
    await accounts.put(Account(id="a4", balance=1))
    with pytest.raises(ev.VersionConflict) as conflict:
        await accounts.delete("a4", expected_version=1)
    assert (conflict.value.expected_version, conflict.value.actual_version) == (1, 2)
    assert await accounts.get("a4") is not None
    await accounts.delete("a4", expected_version=2)
    assert await accounts.get_entry("a4") is None
    await accounts.delete("a4")  # nothing there and no version expected: nothing happens
    with pytest.raises(ev.VersionConflict):
        await accounts.delete("a4", expected_version=2)
    assert await accounts.put(Account(id="a4"), expected_version=0) == 1  # re-created: versions start again


# ------------------------------------------------------------------------------------------ query


async def test_query_lists_a_partition_in_sort_key_order_across_pages(rt: Any) -> None:
    stamps = [f"2024-01-{day:02d}" for day in range(1, 26)]
    shuffled = random.Random(7).sample(stamps, len(stamps))
    for stamp in shuffled:
        await lines.put(Line(account="alice", at=stamp, text=f"line {stamp}"))
    await lines.put(Line(account="bob", at="2024-01-01"))
    await lines.put(Line(account="alicia", at="2024-01-01"))

    seen: list[str] = []
    pages: list[int] = []
    token: str | None = None
    while True:
        page = await lines.query("alice", limit=10, next_token=token)
        pages.append(len(page.entries))
        seen += [entry.value.at for entry in page.entries]
        assert all(entry.version == 1 for entry in page.entries)
        token = page.next_token
        if token is None:
            break
    assert seen == stamps
    assert pages == [10, 10, 5]

    page = await lines.query("alice", prefix="2024-01-1")
    assert [entry.value.at for entry in page.entries] == [f"2024-01-{day}" for day in range(10, 20)]
    assert page.next_token is None
    first = await lines.query("alice", prefix="2024-01-1", limit=4)
    second = await lines.query("alice", prefix="2024-01-1", limit=4, next_token=first.next_token)
    assert [entry.value.at for entry in first.entries + second.entries] == [f"2024-01-{day}" for day in range(10, 18)]
    assert (await lines.query("nobody")).entries == []


async def test_query_refuses_tokens_it_did_not_issue_and_one_part_keys(rt: Any) -> None:
    await lines.put(Line(account="carol", at="1"))
    await lines.put(Line(account="carol", at="2"))
    page = await lines.query("carol", prefix="1", limit=1)
    with pytest.raises(InvalidPageToken, match="next_token"):
        await lines.query("carol", next_token="not a token")
    with pytest.raises(InvalidPageToken, match="another prefix"):
        await lines.query("carol", prefix="2", next_token=(await lines.query("carol", limit=1)).next_token)
    assert page.next_token is None  # the prefix holds one entry: no further page
    with pytest.raises(ev.EventualError, match="two-part key"):
        await accounts.query("a1")
    with pytest.raises(ev.InputValidationError, match="limit"):
        await lines.query("carol", limit=0)


# ------------------------------------------------------------------------------------------ transact


async def test_transact_applies_every_operation_or_none_with_a_reason_per_operation(rt: Any) -> None:
    await accounts.put(Account(id="t1", balance=10))
    await accounts.put(Account(id="t2", balance=20))
    await accounts.put(Account(id="t2", balance=20))
    await lines.put(Line(account="t1", at="old"))

    with pytest.raises(ev.TransactionConflict) as conflict:
        await ev.transact(
            accounts.put_op(Account(id="t1", balance=0), expected_version=1),  # holds
            accounts.put_op(Account(id="t2", balance=0), expected_version=1),  # is at 2
            lines.check_op(("t1", "old"), 1),  # holds
            lines.delete_op(("t1", "missing"), expected_version=3),  # does not exist
            accounts.put_op(Account(id="t3"), expected_version=0),  # holds
        )
    assert conflict.value.reasons == [None, "version 2, expected 1", None, "version 0, expected 3", None]
    assert "operation 2" in conflict.value.message
    assert "operation 4" in conflict.value.message
    assert await accounts.get_entry("t1") == ev.Entry(Account(id="t1", balance=10), 1)
    assert await accounts.get("t3") is None
    assert await lines.get(("t1", "old")) is not None

    results = await ev.transact(
        accounts.put_op(Account(id="t1", balance=0), expected_version=1),
        accounts.put_op(Account(id="t2", balance=30), expected_version=2),
        lines.delete_op(("t1", "old"), expected_version=1),
        lines.check_op(("t1", "never"), 0),
        accounts.put_op(Account(id="t3", balance=5)),
    )
    assert results == [2, 3, None, None, 1]
    assert [await accounts.get(key) for key in ("t1", "t2", "t3")] == [
        Account(id="t1", balance=0),
        Account(id="t2", balance=30),
        Account(id="t3", balance=5),
    ]
    assert await lines.get(("t1", "old")) is None
    rebuilt = error_from_json(conflict.value.to_json())
    assert isinstance(rebuilt, ev.TransactionConflict)
    assert rebuilt.reasons == conflict.value.reasons


async def test_transact_refuses_what_no_store_could_apply_atomically(rt: Any) -> None:
    with pytest.raises(ev.InputValidationError, match="two operations on entity 'accounts' key 'x'"):
        await ev.transact(accounts.put_op(Account(id="x")), accounts.check_op("x", 0))
    with pytest.raises(ev.InputValidationError, match="at most 100 operations"):
        await ev.transact(*(accounts.put_op(Account(id=f"n{i}")) for i in range(101)))
    with pytest.raises(ev.InputValidationError, match="operations made by"):
        await ev.transact(Account(id="x"))  # type: ignore[arg-type]
    assert await ev.transact() == []
    assert await accounts.get("x") is None
    assert await accounts.get("n0") is None


# ------------------------------------------------------------------------------------------ validation


async def test_values_are_validated_by_the_model_on_put(rt: Any) -> None:
    with pytest.raises(InvalidEntityValue) as invalid:
        await accounts.put({"id": "v1", "balance": "lots"})
    assert invalid.value.errors[0]["loc"] == ["balance"]
    assert "balance" in invalid.value.message
    with pytest.raises(InvalidEntityValue, match="stores Account values, got a Line"):
        await accounts.put(Line(account="v1", at="x"))  # type: ignore[arg-type]
    with pytest.raises(InvalidEntityValue, match="must not be empty"):
        await accounts.put(Account(id=""))
    with pytest.raises(InvalidEntityValue, match="pass a pair"):
        await lines.get("alice")
    with pytest.raises(InvalidEntityValue, match="one-part key"):
        await accounts.get(("a", "b"))
    with pytest.raises(InvalidEntityValue, match="not valid Unicode"):
        await accounts.get("a\ud800")  # JSON allows it ("\ud800"); UTF-8, SQLite and DynamoDB do not
    with pytest.raises(InvalidEntityValue, match="no JSON form"):
        await lines.put(Line(account="v1", at="x", text="\udfff"))
    with pytest.raises(InvalidEntityValue, match="1,025 bytes long"):
        await accounts.get("é" * 512 + "x")
    assert await accounts.get("v1") is None


@pytest.mark.parametrize("read", ["get", "query"])
async def test_a_stored_value_the_changed_model_refuses_fails_on_read_naming_the_entry(rt: Any, read: str) -> None:
    class LineV2(BaseModel):
        account: str
        at: str
        text: str = ""
        amount: int  # new and required: the stored lines lack it

    class LineV3(BaseModel):
        account: str
        at: str
        text: str = ""
        amount: int = 0  # new with a default: the stored lines read fine

    await lines.put(Line(account="m1", at="1", text="before"))
    changed = ev.entity("lines", LineV2, key=("account", "at"), service=SERVICE)
    try:
        reading = changed.get(("m1", "1")) if read == "get" else changed.query("m1")
        with pytest.raises(InvalidEntityValue) as invalid:
            await reading
        assert "entity 'lines' key ('m1', '1') (version 1)" in invalid.value.message
        assert "amount" in invalid.value.message
        assert invalid.value.errors[0]["loc"] == ["amount"]
        relaxed = ev.entity("lines", LineV3, key=("account", "at"), service=SERVICE)
        assert await relaxed.get(("m1", "1")) == LineV3(account="m1", at="1", text="before", amount=0)
    finally:
        ev.entity("lines", Line, key=("account", "at"), service=SERVICE)


async def test_a_value_over_350_kb_is_refused_and_one_just_under_is_kept(rt: Any) -> None:
    with pytest.raises(InvalidEntityValue) as too_big:
        await blobs.put(Blob(id="big", data="x" * (350 * 1024)))
    assert "350 KB" in too_big.value.message
    assert "entity 'blobs' key 'big'" in too_big.value.message
    assert await blobs.get("big") is None
    fits = Blob(id="big", data="é" * ((350 * 1024 - 100) // 2))  # two bytes each in UTF-8
    assert await blobs.put(fits) == 1
    assert await blobs.get("big") == fits


# ------------------------------------------------------------------------------------------ where


async def test_activities_use_entities_and_workflow_code_is_refused_with_a_pointer_to_activities(rt: Any) -> None:
    assert await (await deposit_twice.start("w1")).result(timeout=60) == 2
    assert await accounts.get("w1") == Account(id="w1", balance=12)

    await accounts.put(Account(id="w2"))
    handle = await reads_an_entity_itself.start("w2")
    with pytest.raises(ev.ExecutionFailed) as failed:
        await handle.result(timeout=60)
    assert failed.value.error == "EventualError"
    assert "inside workflow code" in failed.value.message
    assert "in an activity" in failed.value.message


async def test_an_entity_without_a_runtime_says_how_to_get_one() -> None:
    with pytest.raises(ev.EventualError, match="no runtime is set"):
        await accounts.get("a1")


def test_entity_definitions_are_checked_and_listed_in_the_service_spec() -> None:
    with pytest.raises(ev.EventualError, match="invalid entity name"):
        ev.entity("no spaces", Account, key="id", service=SERVICE)
    with pytest.raises(ev.EventualError, match="'owner' is not a field of Account"):
        ev.entity("x", Account, key="owner", service=SERVICE)
    with pytest.raises(ev.EventualError, match="pydantic BaseModel"):
        ev.entity("x", dict, key="id", service=SERVICE)  # type: ignore[type-var]
    specs = {spec["name"]: spec for spec in SERVICE.spec()["entities"]}
    assert specs["lines"]["key"] == ["account", "at"]
    assert specs["accounts"]["key"] == ["id"]
    assert specs["accounts"]["model"] == "Account"
    assert "balance" in specs["accounts"]["schema"]["properties"]
    assert issubclass(EntityNotFound, LookupError)
    assert EntityNotFound.status_code == 404


# ------------------------------------------------------------------------------------------ inspection


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess, waited for in a thread: the runtime answering it runs on this test's loop."""
    command = [sys.executable, "-m", "eventual_nb.cli", *args]
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60, check=False)


async def test_the_service_client_and_the_cli_show_entities_and_entries(rt: Any) -> None:
    """`eventual-nb entities`, `eventual-nb entity NAME KEY [SORT]` and their ServiceClient calls, against a
    real server (uvicorn on 127.0.0.1) over the runtime."""
    await accounts.put(Account(id="i1", balance=7))
    await accounts.put(Account(id="i1", balance=8))
    await lines.put(Line(account="alice", at="0001", text="hello"))
    with run_server(rt, own_runtime=False) as server:
        async with ev.ServiceClient(server.url) as client:
            listed = {entity.name: entity for entity in await client.list_entities()}
            assert listed["accounts"].key == ["id"]
            assert listed["lines"].key == ["account", "at"]
            assert listed["accounts"].service == SERVICE.name
            assert listed["accounts"].model == "Account"
            counted = {name: entity.count for name, entity in listed.items()}
            assert counted == {"accounts": 1, "lines": 1, "blobs": 0, "counters": 0} or set(counted.values()) == {None}
            record = await client.get_entity("accounts", "i1")
            assert (record.entity, record.key, record.value, record.version) == (
                "accounts",
                "i1",
                {"id": "i1", "balance": 8},
                2,
            )
            two = await client.get_entity("lines", ("alice", "0001"))
            assert (two.key, two.value["text"]) == (["alice", "0001"], "hello")
            with pytest.raises(EntityNotFound) as missing:
                await client.get_entity("accounts", "nobody")
            assert (missing.value.entity, missing.value.key) == ("accounts", "nobody")
            assert "no entry with key 'nobody'" in missing.value.message
            with pytest.raises(EntityNotFound, match="no entity named 'nothing'"):
                await client.get_entity("nothing", "x")
            with pytest.raises(EntityNotFound, match=r"pass a pair .*, so it has no such entry"):
                await client.get_entity("lines", "alice")
            with pytest.raises(EntityNotFound, match="must not be empty"):
                await client.get_entity("accounts", "")
        async with httpx.AsyncClient() as http:
            schema = (await http.get(f"{server.url}/_eventual/openapi.json", timeout=10)).json()
        assert "404" in schema["paths"]["/_eventual/entities/{name}/entry"]["get"]["responses"]

        listed_json = json.loads(_ok(await cli("entities", "--url", server.url, "--json")).stdout)
        assert {entity["name"] for entity in listed_json} == {"accounts", "lines", "blobs", "counters"}
        table = _ok(await cli("entities", "--url", server.url)).stdout
        assert "accounts" in table
        assert "account, at" in table
        shown = json.loads(_ok(await cli("entity", "lines", "alice", "0001", "--url", server.url, "--json")).stdout)
        assert (shown["value"]["text"], shown["version"]) == ("hello", 1)
        assert "balance" in _ok(await cli("entity", "accounts", "i1", "--url", server.url)).stdout
        missing_cli = await cli("entity", "accounts", "nobody", "--url", server.url)
        assert missing_cli.returncode == 1
        assert "no entry with key 'nobody'" in missing_cli.stderr
        assert "Traceback" not in missing_cli.stderr


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.mark.parametrize("runtime", ["test", "local"])
def test_the_kernel_lists_entities_and_shows_an_entry(tmp_path: Path, runtime: str) -> None:
    """`%eventual entities` in a real kernel; a notebook cell reads and writes entities on the notebook's runtime."""
    cells = [
        "%load_ext eventual_nb\nfrom pydantic import BaseModel\n%eventual service kernel-entities",
        f"%eventual runtime {runtime}",
        "class Note(BaseModel):\n    id: str\n    text: str\n\nnotes = ev.entity('notes', Note, key='id')\n"
        "print(await notes.put(Note(id='n1', text='first')), await notes.put(Note(id='n1', text='second')))",
        "%eventual entities",
        "%eventual entities notes n1",
        "%eventual entities notes nobody",
    ]
    nb = run_notebook(cells, tmp_path)
    for index in range(6):
        assert error_of(nb.cells[index]) is None, (index, error_of(nb.cells[index]))
    assert text_of(nb.cells[2]).split() == ["1", "2"]
    assert "notes" in text_of(nb.cells[3])
    assert "by id: 1 entries" in text_of(nb.cells[3])
    assert "notes 'n1' version 2" in text_of(nb.cells[4])
    assert '"text": "second"' in text_of(nb.cells[4])
    assert "UsageError: %eventual entities: entity 'notes' has no entry with key 'nobody'" in text_of(
        nb.cells[5], "stderr"
    )


# ------------------------------------------------------------------------------------------ LocalRuntime only


class Counter(BaseModel):
    id: str
    value: int = 0


counters = ev.entity("counters", Counter, key="id")


async def increment(times: int, conflicts: list[int]) -> None:
    """Read, put with the version read, retry on a conflict: `times` increments of the one counter."""
    for _ in range(times):
        while True:
            entry = await counters.get_entry("c")
            assert entry is not None
            try:
                await counters.put(Counter(id="c", value=entry.value.value + 1), expected_version=entry.version)
                break
            except ev.VersionConflict:
                conflicts.append(1)


async def test_twenty_tasks_incrementing_one_counter_with_retries_on_conflict_count_exactly(tmp_path: Path) -> None:
    """Ten tasks on the runtime's own loop and ten on another thread's loop (a notebook cell's, a server's):
    1,000 increments in all, every lost update caught as a VersionConflict and retried."""
    conflicts: list[int] = []
    async with ev.LocalRuntime(tmp_path / "state.db", service=SERVICE):
        await counters.put(Counter(id="c"), expected_version=0)

        def other_thread() -> None:
            async def tasks() -> None:
                await asyncio.gather(*(increment(50, conflicts) for _ in range(10)))

            asyncio.run(tasks())

        await asyncio.gather(asyncio.to_thread(other_thread), *(increment(50, conflicts) for _ in range(10)))
        entry = await counters.get_entry("c")
    assert entry is not None
    assert entry.value.value == 1000
    assert entry.version == 1001
    print(f"1,000 increments by 20 tasks, {len(conflicts)} conflicts retried")


CRASH_FIXTURE = Path(__file__).parent / "fixtures" / "entity_crash.py"


def _kill_three_times(db: Path, acks: Path, tmp_path: Path) -> None:
    """Run the transaction stream three times on `db`, each killed with SIGKILL at a random moment."""
    acks.touch()
    chaos = random.Random(os.environ.get("CRASH_SEED", "entities"))
    for run in range(3):
        process = subprocess.Popen(
            [sys.executable, str(CRASH_FIXTURE), str(db), str(acks), f"run{run}"],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"run{run}.log").open("w"),
        )
        target = len(acks.read_text().splitlines()) + chaos.randint(50, 400)
        deadline = time.monotonic() + 120
        while len(acks.read_text().splitlines()) < target:
            assert process.poll() is None, (tmp_path / f"run{run}.log").read_text()
            assert time.monotonic() < deadline, "the transaction stream did not get going"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        assert process.wait(30) == -signal.SIGKILL


@pytest.mark.timeout(300)
async def test_sigkill_during_a_stream_of_transactions_leaves_each_wholly_applied_or_not_at_all(
    tmp_path: Path,
) -> None:
    """tests/fixtures/entity_crash.py moves money between five accounts with eight tasks, each move one
    transaction of four writes (a create-only marker, two balances, a tally); it is killed with SIGKILL three
    times at random moments and started again on the same database. Then: the balances still sum to 5,000,
    the tally equals the number of markers, and every transaction that was acknowledged is there."""
    db, acks = tmp_path / "state.db", tmp_path / "acks.txt"
    await asyncio.to_thread(_kill_three_times, db, acks, tmp_path)

    acknowledged = acks.read_text().splitlines()
    async with ev.LocalRuntime(db, service=SERVICE) as runtime:  # the store's rows need no definitions
        store = runtime.entity_store()
        balances = [await store.get(EntityKey("accounts", f"a{index}")) for index in range(5)]
        tally = await store.get(EntityKey("tallies", "tally"))
        moves = await store.count("moves")
        lost = [key for key in acknowledged if await store.get(EntityKey("moves", key)) is None]
    assert all(entry is not None for entry in balances)
    assert tally is not None
    assert sum(json.loads(entry.value)["balance"] for entry in balances if entry is not None) == 5000
    assert json.loads(tally.value)["moves"] == moves  # every move whole: its marker and its tally increment
    assert tally.version == moves + 1  # created, then one increment per move
    assert not lost, f"{len(lost)} acknowledged transactions were lost, e.g. {lost[:3]}"
    assert moves is not None
    assert moves >= len(acknowledged)
    print(f"{moves} transactions survived 3 SIGKILLs, {len(acknowledged)} of them acknowledged")


async def test_a_database_of_the_release_before_entities_opens_with_its_entities_table(tmp_path: Path) -> None:
    """Schema version 2 (no entities table) migrates on open; entries then persist across a restart."""
    path = tmp_path / "state.db"
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.row_factory = sqlite3.Row
        for migration in MIGRATIONS[:2]:
            migration.apply(connection)
        connection.execute("PRAGMA user_version = 2")
        connection.commit()
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "entities" not in tables
    assert "executions" in tables
    async with ev.LocalRuntime(path, service=SERVICE):
        assert await accounts.put(Account(id="m1", balance=3)) == 1
    with contextlib.closing(sqlite3.connect(path)) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 3
    async with ev.LocalRuntime(path, service=SERVICE):
        assert await accounts.get_entry("m1") == ev.Entry(Account(id="m1", balance=3), 1)


# ------------------------------------------------------------------------------------------ AWS only


async def test_on_aws_an_activity_reaches_the_entities_through_the_runtime_its_function_gives_it(
    moto_endpoint: str, dummy_credentials: None
) -> None:
    """Inside Lambda no runtime is the process default (the activity function's process has no API handler
    to set one): the activity worker itself must make a runtime current for the code it runs. Here nothing
    is current or default either; the stack's functions (driven by the harness) run `deposit_twice`."""
    from eventual_nb.aws import AwsRuntime
    from eventual_nb.runtime.aws.functions import StackFunctions
    from eventual_nb.runtime.aws.harness import Harness

    aws_support.reset_moto(moto_endpoint)
    entities = [entity.spec() for entity in SERVICE.entities.values()]
    stack = aws_support.deploy_stack(moto_endpoint, stack="entity-fn", service=SERVICE.name, entities=entities)
    functions = StackFunctions(
        [SERVICE],
        environ=stack.environment,
        client_kwargs=aws_support.client_kwargs(moto_endpoint),
        timer_hop_seconds=1,
    )
    harness = Harness(functions.clients, functions.handlers(), functions.clients.clock)
    client = AwsRuntime(region=aws_support.REGION, endpoint_url=moto_endpoint, environment=stack.environment)
    assert ev.current_runtime(required=False) is None
    handle = await client.start_execution(deposit_twice, "fn1")
    await asyncio.to_thread(harness.run_until_idle, 100, 5.0)
    execution = await client.get_execution(handle.id)
    assert (execution.status, execution.result) == (ev.ExecutionStatus.SUCCEEDED, 2), execution
    stored = await client.entity_store().get(EntityKey("accounts", "fn1"))
    assert stored is not None
    assert (json.loads(stored.value), stored.version) == ({"id": "fn1", "balance": 12}, 2)
