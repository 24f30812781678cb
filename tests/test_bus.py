"""Services composing through events: a subscription with `source=` receives another service's events.

The behaviour runs on all three runtimes: a TestEnvironment serving both services, two LocalRuntimes
(one per service) sharing the event bus file beside their databases, and two AWS stacks in moto's server.
Then what only the local bus promises: read positions in each runtime's own database, forwarding through
the outbox after a crash, retention, waking without polling, `list_events`; and the acceptance test with
two real `eventual-nb serve` processes killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import eventual_nb as ev
from eventual_nb.runtime import core
from eventual_nb.runtime.local import buslink
from eventual_nb.runtime.local.bus import Bus, Outgoing
from eventual_nb.runtime.local.store import Database
from exporter.deploy import DeployError, deploy
from exporter.template import SOURCE_BUSES_METADATA, build_template, source_bus_parameter, subscription_logical_id
from tests import aws_support
from tests.aws_rig import aws_stack_pair
from tests.server_support import run_server

# the AWS leg's moto server (module-scoped, started only when an "aws" test asks for it) and credentials
moto_endpoint = aws_support.moto_endpoint
dummy_credentials = aws_support.dummy_credentials

#: how long a test waits for a delivery before failing (real seconds)
WAIT = 20

BANK = ev.Service("tests-bus-bank")


class BusTransferred(ev.Event):
    id: str


#: (subscription, transfer id) of every delivery, in this process
RECEIVED: list[tuple[str, str]] = []


class BusRefused(ev.Event):
    id: str


@ev.workflow
async def bus_transfer(id: str) -> str:
    await ev.publish(BusTransferred(id=id))
    return id


@ev.subscription(BusTransferred, name="bus-bank-audit")
def bus_bank_audit(event: BusTransferred) -> None:
    RECEIVED.append(("audit", event.id))


NOTES = ev.Service("tests-bus-notes")


@ev.subscription("BusTransferred", source="tests-bus-bank", name="bus-notify")
def bus_notify(event: Any) -> None:
    RECEIVED.append(("notify", event.id if isinstance(event, BusTransferred) else event["id"]))


@ev.subscription("BusTransferred", name="bus-notes-own")
def bus_notes_own(event: Any) -> None:
    """Subscribes to its own service's `BusTransferred`: the bank's never reach it."""
    RECEIVED.append(("own", event.id if isinstance(event, BusTransferred) else event["id"]))


@ev.subscription(
    "BusRefused",
    source="tests-bus-bank",
    name="bus-refuse",
    retry=ev.RetryPolicy(max_attempts=2, initial_interval="0.01s"),
)
def bus_refuse(event: Any) -> None:
    raise ValueError(f"refusing {event['id'] if isinstance(event, dict) else event.id}")


def received(prefix: str) -> Counter[tuple[str, str]]:
    return Counter(item for item in RECEIVED if item[1].startswith(prefix))


async def eventually(check: Callable[[], bool], what: str, tick: Callable[[], Any] | None = None) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; received {RECEIVED}")
        if tick is not None:
            await tick()
        else:
            await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------ on all three runtimes


class Pair:
    """The runtime serving the bank, the one serving notifications (the same TestEnvironment for both),
    and how to let time pass."""

    def __init__(self, bank: Any, notes: Any, tick: Callable[[], Any] | None = None) -> None:
        self.bank, self.notes, self.tick = bank, notes, tick


@contextlib.asynccontextmanager
async def open_pair(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Pair]:
    if kind == "test":
        async with ev.testing.TestEnvironment() as env:
            yield Pair(env, env, env.tick)
    elif kind == "local":
        async with (
            ev.LocalRuntime(tmp_path / "bank.db", service=BANK) as bank,
            ev.LocalRuntime(tmp_path / "notes.db", service=NOTES) as notes,
        ):
            yield Pair(bank, notes)
    else:
        request.getfixturevalue("dummy_credentials")
        async with aws_stack_pair(request.getfixturevalue("moto_endpoint"), BANK, NOTES) as (bank, notes):
            yield Pair(bank, notes)


@pytest.fixture(params=["test", "local", "aws"])
async def pair(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Pair]:
    async with open_pair(request.param, request, tmp_path) as opened:
        yield opened


async def test_a_subscription_naming_another_service_receives_its_events(pair: Pair, request: Any) -> None:
    prefix = f"{request.node.callspec.id}-"
    handle = await pair.bank.start_execution("bus_transfer", f"{prefix}1")
    assert await handle.result(timeout=WAIT) == f"{prefix}1"
    await pair.bank.publish_events(BusTransferred(id=f"{prefix}2"))
    expected = {(who, f"{prefix}{n}") for who in ("audit", "notify") for n in (1, 2)}
    await eventually(lambda: set(received(prefix)) >= expected, "both deliveries to both services", pair.tick)
    # a little more time for duplicates or a delivery to the wrong subscription to show up
    for _ in range(20):
        await (pair.tick() if pair.tick is not None else asyncio.sleep(0.02))
    assert received(prefix) == Counter(expected), "each subscription got each event once; bus-notes-own none"
    assert await pair.notes.list_dead_letters() == []


# ------------------------------------------------------------------------------ AWS: deploying the two stacks


def fake_export(directory: Path, service: ev.Service) -> Path:
    """What `eventual-nb export --zip` writes, for `service`, with a stand-in lambda.zip (the deploy's checks
    and CloudFormation read the template and the zip's digest, never run the code)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handlers.py", "def api(event, context):\n    return {}\n")
    code = buffer.getvalue()
    digest = hashlib.sha256(code).hexdigest()
    subscriptions = [subscription.spec() for subscription in service.subscriptions.values()]
    manifest = {
        **aws_support.manifest(service.name, subscriptions),
        "lambda_zip": {"sha256": digest, "s3_key": f"lambda/{digest}.zip"},
    }
    directory.mkdir(parents=True)
    (directory / "eventual.json").write_text(json.dumps(manifest))
    (directory / "template.json").write_text(json.dumps(build_template(manifest)))
    (directory / "lambda.zip").write_bytes(code)
    return directory


def test_the_subscribing_stack_deploys_after_the_source_and_puts_its_rules_on_the_sources_bus(
    moto_endpoint: str, dummy_credentials: None, tmp_path: Path
) -> None:
    aws_support.reset_moto(moto_endpoint)
    bank, notes = fake_export(tmp_path / "bank", BANK), fake_export(tmp_path / "notes", NOTES)
    bank_bus = f"{BANK.name}-{BANK.name}"
    with pytest.raises(DeployError) as early:
        deploy(notes, NOTES.name, endpoint_url=moto_endpoint, region=aws_support.REGION)
    assert early.value.message == (
        f"service {NOTES.name!r} subscribes to events of service {BANK.name!r}, whose event bus {bank_bus!r} does "
        f"not exist in {aws_support.REGION}: deploy service {BANK.name!r} first as stack {BANK.name!r} "
        f"(`eventual-nb deploy DIR --stack {BANK.name}`), or name its bus with --source-bus {BANK.name}=BUS"
    )
    cloudformation = aws_support.aws_client(moto_endpoint, "cloudformation")
    assert cloudformation.describe_stacks()["Stacks"] == [], "nothing was created"
    with pytest.raises(DeployError, match="--source-bus names 'nobody', but service 'tests-bus-notes' subscribes"):
        deploy(notes, NOTES.name, endpoint_url=moto_endpoint, source_buses={"nobody": "x"})

    deploy(bank, BANK.name, endpoint_url=moto_endpoint)
    assert deploy(notes, NOTES.name, endpoint_url=moto_endpoint).action == "created"
    events = aws_support.aws_client(moto_endpoint, "events")
    rules = {rule["Name"]: rule for rule in events.list_rules(EventBusName=bank_bus)["Rules"]}
    patterns = [json.loads(rule["EventPattern"]) for name, rule in rules.items() if name.startswith(NOTES.name)]
    assert sorted(pattern["detail-type"][0] for pattern in patterns) == ["BusRefused", "BusTransferred"]
    assert all(pattern["source"] == [BANK.name] for pattern in patterns)
    own = events.list_rules(EventBusName=f"{NOTES.name}-{NOTES.name}")["Rules"]
    assert [json.loads(rule["EventPattern"])["source"] for rule in own] == [[NOTES.name]], "bus-notes-own"

    # another stack of the bank, named explicitly
    deploy(bank, "bank-two", endpoint_url=moto_endpoint)
    deploy(notes, "notes-two", endpoint_url=moto_endpoint, source_buses={BANK.name: f"bank-two-{BANK.name}"})
    two = events.list_rules(EventBusName=f"bank-two-{BANK.name}")["Rules"]
    assert len([rule for rule in two if rule["Name"].startswith("notes-two")]) == 2


def test_a_subscription_to_another_service_adds_a_bus_parameter_and_no_permission() -> None:
    template = build_template(aws_support.manifest(NOTES.name, [s.spec() for s in NOTES.subscriptions.values()]))
    parameter = source_bus_parameter(BANK.name)
    assert template["Metadata"] == {SOURCE_BUSES_METADATA: {BANK.name: parameter}}
    assert template["Parameters"][parameter]["Default"] == f"{BANK.name}-{BANK.name}"
    referring = sorted(
        logical_id
        for logical_id, resource in template["Resources"].items()
        if json.dumps({"Ref": parameter}) in json.dumps(resource)
    )
    assert referring == sorted(f"{subscription_logical_id(name)}Rule" for name in ("bus-notify", "bus-refuse")), (
        "only the rules name the other bus: no function's role gets a permission on it"
    )
    assert template["Outputs"]["BusName"]["Export"] == {"Name": {"Fn::Sub": "${AWS::StackName}-BusName"}}
    alone = build_template(aws_support.manifest(BANK.name, [s.spec() for s in BANK.subscriptions.values()]))
    assert "Metadata" not in alone
    assert not any(name.startswith("BusOf") for name in alone["Parameters"])


# ------------------------------------------------------------------------------ the local bus


async def test_events_published_while_the_subscriber_was_stopped_arrive_when_it_starts(tmp_path: Path) -> None:
    async with ev.LocalRuntime(tmp_path / "notes.db", service=NOTES):
        pass  # it has read the (empty) bus: its position is the bus's end
    async with ev.LocalRuntime(tmp_path / "bank.db", service=BANK) as bank:
        await bank.publish_events(BusTransferred(id="down-1"), BusTransferred(id="down-2"))
    async with ev.LocalRuntime(tmp_path / "notes.db", service=NOTES):
        await eventually(lambda: {("notify", "down-1"), ("notify", "down-2")} <= set(RECEIVED), "the deliveries")
    async with ev.LocalRuntime(tmp_path / "notes.db", service=NOTES) as notes:
        await asyncio.sleep(0.1)
        assert (await notes.list_dead_letters()) == []
    assert received("down-")[("notify", "down-1")] == 1, "the read position moved past them: not delivered again"


async def test_a_runtime_new_to_the_bus_starts_at_its_end(tmp_path: Path) -> None:
    async with ev.LocalRuntime(tmp_path / "bank.db", service=BANK) as bank:
        await bank.publish_events(BusTransferred(id="before-1"))
    async with (
        ev.LocalRuntime(tmp_path / "notes.db", service=NOTES),
        ev.LocalRuntime(tmp_path / "bank.db", service=BANK) as bank,
    ):
        await bank.publish_events(BusTransferred(id="before-2"))
        await eventually(lambda: ("notify", "before-2") in RECEIVED, "the event published after it started")
    assert ("notify", "before-1") not in RECEIVED


async def test_an_outbox_row_left_by_a_crash_before_forwarding_is_forwarded_at_the_next_start(tmp_path: Path) -> None:
    async with (
        ev.LocalRuntime(tmp_path / "notes.db", service=NOTES),
        ev.LocalRuntime(tmp_path / "bank.db", service=BANK),
    ):
        pass
    # what a kill between the publishing commit and the forward leaves: a row in the bank's outbox only
    database = Database(tmp_path / "bank.db")
    with database.transaction():
        database.add_outbox(BANK.name, "BusTransferred", json.dumps({"id": "outbox-1"}), time.time())
    database.close()
    async with (
        ev.LocalRuntime(tmp_path / "bank.db", service=BANK),
        ev.LocalRuntime(tmp_path / "notes.db", service=NOTES) as notes,
    ):
        await eventually(lambda: ("notify", "outbox-1") in RECEIVED, "the delivery of the forwarded row")
        assert [event.event for event in await notes.list_events(source=BANK.name)] == [{"id": "outbox-1"}]
    database = Database(tmp_path / "bank.db")
    assert database.outbox(0, 10) == [], "forwarded rows leave the outbox"
    database.close()


def test_appending_the_same_outbox_rows_twice_puts_them_on_the_bus_once(tmp_path: Path) -> None:
    bus = Bus(tmp_path / "bus.db")
    rows = [Outgoing(1, "a", "E", "{}", time.time()), Outgoing(2, "a", "E", "{}", time.time())]
    bus.append("origin", rows)
    bus.append("origin", rows)  # a crash between the bus commit and the outbox delete forwards them again
    bus.append("other", rows[:1])
    entries = bus.after(0, 10)
    assert [(entry.origin, entry.payload) for entry in entries] == [("origin", "{}")] * 2 + [("other", "{}")]
    assert [entry.seq for entry in entries] == sorted(entry.seq for entry in entries)
    bus.close()


async def test_bus_entries_older_than_the_retention_are_pruned(tmp_path: Path) -> None:
    bus = Bus(tmp_path / "bus.db")
    now = time.time()
    old = [Outgoing(1, BANK.name, "BusTransferred", json.dumps({"id": "old"}), now - 8 * 86400)]
    recent = [Outgoing(2, BANK.name, "BusTransferred", json.dumps({"id": "recent"}), now - 6 * 86400)]
    bus.append("elsewhere", old + recent)
    bus.close()
    async with ev.LocalRuntime(tmp_path / "notes.db", service=NOTES) as notes:  # default retention: 7 days
        assert [event.event["id"] for event in await notes.list_events()] == ["recent"]
    async with ev.LocalRuntime(tmp_path / "notes.db", service=NOTES, bus_retention="5d") as notes:
        assert await notes.list_events() == []


async def test_delivery_across_runtimes_is_woken_by_the_doorbell(tmp_path: Path, monkeypatch: Any) -> None:
    """With the fallback look at the bus an hour away, only the ring can wake the subscriber in time."""
    monkeypatch.setattr(buslink, "CHECK_SECONDS", 3600.0)
    async with (
        ev.LocalRuntime(tmp_path / "notes.db", service=NOTES) as notes,
        ev.LocalRuntime(tmp_path / "bank.db", service=BANK) as bank,
    ):
        await asyncio.sleep(0.05)  # both idle
        commits = notes.commits
        await asyncio.sleep(0.3)
        assert notes.commits == commits, "an idle subscriber commits nothing"
        await bank.publish_events(BusTransferred(id="rung-1"))
        await eventually(lambda: ("notify", "rung-1") in RECEIVED, "the rung delivery")


async def test_list_events_filters_and_bounds(tmp_path: Path) -> None:
    async with ev.LocalRuntime(tmp_path / "bank.db", service=BANK) as bank:
        await bank.publish_events(*(BusTransferred(id=f"listed-{n}") for n in range(3)))
        events = await bank.list_events(max_results=2)
        assert [event.event["id"] for event in events] == ["listed-2", "listed-1"]
        assert {event.source for event in events} == {BANK.name}
        assert await bank.list_events(name="Other") == []
        with pytest.raises(ev.InputValidationError, match="max_results must be between 1 and 1000"):
            await bank.list_events(max_results=0)


async def test_without_a_bus_events_stay_in_the_runtime(tmp_path: Path) -> None:
    async with ev.LocalRuntime(tmp_path / "bank.db", service=BANK, bus=False) as bank:
        await bank.publish_events(BusTransferred(id="nobus-1"))
        await eventually(lambda: ("audit", "nobus-1") in RECEIVED, "the local delivery")
        with pytest.raises(ev.EventualError, match="bus=False"):
            await bank.list_events()
    assert not (tmp_path / "bus.db").exists()


def test_a_runtime_serving_the_source_service_does_not_take_its_events_from_the_bus() -> None:
    """A notebook and `eventual-nb serve` both serving the bank: the publisher delivers to the bank's
    subscribers, the other runtime must not deliver them again."""
    assert core.bus_subscriptions_for([NOTES], "BusTransferred", BANK.name) == [bus_notify]
    assert core.bus_subscriptions_for([NOTES, BANK], "BusTransferred", BANK.name) == []
    assert core.bus_subscriptions_for([NOTES], "BusTransferred", None) == []
    assert core.bus_subscriptions_for([NOTES], "Other", BANK.name) == []


async def test_a_delivery_from_the_bus_that_keeps_failing_is_a_dead_letter_of_its_subscription(tmp_path: Path) -> None:
    async with (
        ev.LocalRuntime(tmp_path / "notes.db", service=NOTES) as notes,
        ev.LocalRuntime(tmp_path / "bank.db", service=BANK) as bank,
    ):
        await bank.publish_events(BusRefused(id="refused-1"))
        deadline = time.monotonic() + WAIT
        while not (letters := await notes.list_dead_letters()):
            assert time.monotonic() < deadline, "no dead letter"
            await asyncio.sleep(0.02)
        [letter] = letters
        assert (letter.subscription, letter.event["event"], letter.attempts) == ("bus-refuse", {"id": "refused-1"}, 2)
        assert (letter.error, letter.message) == ("ValueError", "refusing refused-1")
        assert await bank.list_dead_letters() == []


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess, waited for in a thread: the runtime answering it runs on this test's loop."""
    command = [sys.executable, "-m", "eventual_nb.cli", *args]
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60, check=False)


async def test_the_events_verb_lists_the_buss_recent_events(tmp_path: Path) -> None:
    """`eventual-nb events` against a server over the notifications runtime shows what the bank published."""
    async with (
        ev.LocalRuntime(tmp_path / "notes.db", service=NOTES) as notes,
        ev.LocalRuntime(tmp_path / "bank.db", service=BANK) as bank,
    ):
        await bank.publish_events(BusTransferred(id="cli-1"), BusTransferred(id="cli-" + "x" * 100))
        await notes.publish_events({"name": "Noted", "event": {"n": 1}})
        with run_server(notes, own_runtime=False) as server:
            listed = await cli("events", "--url", server.url, "--json")
            assert listed.returncode == 0, listed.stderr
            rows = json.loads(listed.stdout)
            assert [(row["source"], row["name"]) for row in rows] == [
                (NOTES.name, "Noted"),
                (BANK.name, "BusTransferred"),
                (BANK.name, "BusTransferred"),
            ]
            assert rows[2]["event"] == {"id": "cli-1"}
            assert rows[0]["time"] > rows[2]["time"]

            only = await cli("events", "--url", server.url, "--json", "--source", BANK.name, "--max-results", "1")
            assert [row["event"]["id"][:6] for row in json.loads(only.stdout)] == ["cli-xx"]

            table = await cli("events", "--url", server.url)
            assert table.returncode == 0, table.stderr
            assert "3 event(s)" in table.stdout
            assert '{"id": "cli-1"}' in table.stdout
            assert "x" * 100 not in table.stdout, "a long payload is cut to a preview"

            bad = await cli("events", "--url", server.url, "--max-results", "0")
            assert bad.returncode == 2, bad.stderr
            assert "--max-results: max_results must be between 1 and 1000, got 0" in bad.stderr
            assert "Traceback" not in bad.stderr


# ------------------------------------------------------------------------------ two real servers


FIXTURES = Path(__file__).parent / "fixtures"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(directory: Path, fixture: str, port: int, notes: Path) -> subprocess.Popen[bytes]:
    """`eventual-nb serve FIXTURE --port PORT` in `directory`, with no other flags; returns once healthy."""
    log = directory / f"{fixture}.log"
    env = {**os.environ, "BUS_NOTES_FILE": str(notes), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "eventual_nb.cli", "serve", str(FIXTURES / f"{fixture}.py"), "--port", str(port)]
    process = subprocess.Popen(command, cwd=directory, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/_eventual/health", timeout=0.5).status_code == 200:
                return process
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"server did not come up:\n{log.read_text()}")


def _kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


async def _noted(notes: Path, accounts: set[str]) -> Counter[str]:
    deadline = time.monotonic() + WAIT
    while True:
        lines = Counter((await asyncio.to_thread(notes.read_text)).split())
        if accounts <= set(lines) or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.02)


@pytest.mark.timeout(180)
async def test_two_servers_in_one_directory_exchange_events_across_sigkills(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.touch()
    bank_port, notes_port = _free_port(), _free_port()
    bank = _serve(tmp_path, "bus_bank", bank_port, notes)
    subscriber = _serve(tmp_path, "bus_notes", notes_port, notes)
    try:
        async with ev.ServiceClient(f"http://127.0.0.1:{bank_port}") as client:
            handle = await client.start_execution("deposit", "a1")
            assert await handle.result(timeout=WAIT) == "a1"
            assert (await _noted(notes, {"a1"}))["a1"] == 1, "the workflow's event reached the other server"

            _kill(subscriber)
            await client.publish_events({"name": "Deposited", "event": {"account": "a2", "amount": 2}})
            await client.publish_events({"name": "Deposited", "event": {"account": "a3", "amount": 3}})
            subscriber = _serve(tmp_path, "bus_notes", notes_port, notes)
            lines = await _noted(notes, {"a2", "a3"})
            assert lines["a2"] == lines["a3"] == 1, "published while the subscriber was down: delivered on restart"

            await client.publish_events({"name": "Deposited", "event": {"account": "a4", "amount": 4}})
        _kill(bank)  # right after `publish` returned
        assert (await _noted(notes, {"a4"}))["a4"] == 1, "the killed publisher's event is still delivered"
        assert (tmp_path / ".eventual" / "bus.db").exists()
        assert {path.name for path in (tmp_path / ".eventual").glob("*.db")} == {
            "bus.db",
            "bus-bank.db",
            "bus-notes.db",
        }
    finally:
        for process in (bank, subscriber):
            if process.poll() is None:
                _kill(process)


async def test_a_runtime_that_reads_nothing_from_the_bus_never_wakes_to_look_at_it(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The look for lost rings is for runtimes with a subscription to another service's events; one without
    (the bank here) sleeps until something is due, so an idle runtime with a bus has no idle wake-ups."""
    monkeypatch.setattr(buslink, "CHECK_SECONDS", 0.1)
    async with (
        ev.LocalRuntime(tmp_path / "bank.db", service=BANK) as bank,
        ev.LocalRuntime(tmp_path / "notes.db", service=NOTES) as notes,
    ):
        await asyncio.sleep(0.1)  # both idle
        bank_wakeups, notes_wakeups = bank.idle_wakeups, notes.idle_wakeups
        await asyncio.sleep(1.0)
        assert bank.idle_wakeups == bank_wakeups
        assert notes.idle_wakeups > notes_wakeups  # the subscriber still looks for rings it may have missed
        await bank.publish_events(BusTransferred(id="quiet-1"))
        await eventually(lambda: ("notify", "quiet-1") in RECEIVED, "the delivery")
