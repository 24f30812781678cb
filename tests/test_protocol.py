"""The service-client protocol (one protocol for runtimes and clients) on a TestEnvironment."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

import eventual_nb as ev
from eventual_nb.runtime import base as runtime_base

SERVICE = ev.Service("tests-protocol")

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def make_env(**options: Any) -> ev.testing.TestEnvironment:
    return ev.testing.TestEnvironment(service=SERVICE, start=T0, **options)


# ------------------------------------------------------------------------------------------ definitions


class Greeting(BaseModel):
    name: str
    excited: bool = False


class Decision(BaseModel):
    ok: bool


decision = ev.signal("decision", Decision)
poke = ev.signal("poke")


@ev.activity
async def shout(text: str) -> str:
    print(f"shouting {text}")
    return text.upper()


@ev.workflow
async def greet(greeting: Greeting) -> str:
    print(f"greeting {greeting.name}")
    text = f"hello {greeting.name}" + ("!" if greeting.excited else "")
    return await shout(text)


@ev.workflow(timeout="2h")
async def naps() -> str:
    await ev.sleep("1 day")
    return "rested"


@ev.workflow
async def broken() -> None:
    raise LookupError("nothing here")


@ev.workflow
async def parent_greets() -> str:
    return await greet(Greeting(name="child"))


@ev.workflow
async def decides() -> list[bool]:
    first = await decision.expect()
    second = await decision.expect()
    return [first.ok, second.ok]


@ev.workflow
async def counts_pokes() -> int:
    seen = 0

    def on_poke(_payload: Any) -> None:
        nonlocal seen
        seen += 1

    poke.on(on_poke)
    await ev.sleep("1h")
    return seen


#: tokens handed out by `external`, so a test can complete the activity from outside
TOKENS: list[str] = []


@ev.activity
async def external(order: str) -> str:
    return ev.async_result(TOKENS.append)


@ev.workflow
async def waits_external(order: str) -> dict[str, Any]:
    try:
        return {"result": await external(order)}
    except ev.ActivityFailed as exc:
        return {"error": exc.error, "message": exc.message}


class AccountOpened(ev.Event):
    account_id: str


class Poison(ev.Event):
    why: str


WELCOMED: list[str] = []


@ev.subscription(AccountOpened, name="protocol-welcome")
async def welcome(event: AccountOpened) -> None:
    WELCOMED.append(event.account_id)


@ev.subscription(Poison, name="protocol-poison", retry=ev.RetryPolicy(max_attempts=2, initial_interval="10s"))
async def poisoned(event: Poison) -> None:
    raise ValueError(f"cannot digest {event.why}")


# ------------------------------------------------------------------------------------------ workflows and starts


async def test_list_workflows_names_every_workflow_of_the_service() -> None:
    async with make_env() as env:
        workflows = await env.list_workflows()
        names = {info.name for info in workflows}
        assert names == set(SERVICE.workflows)
        assert {"greet", "naps", "broken", "parent_greets", "decides"} <= names
        by_name = {info.name: info for info in workflows}
        assert by_name["naps"].timeout_seconds == 7200
        assert by_name["greet"].timeout_seconds is None
        assert all(isinstance(info, ev.WorkflowInfo) for info in workflows)


async def test_start_execution_by_object_and_by_name() -> None:
    async with make_env() as env:
        by_object = await env.start_execution(greet, Greeting(name="ada"), name="obj")
        by_name = await env.start_execution("greet", {"name": "bob", "excited": True}, name="str")
        assert isinstance(by_object, ev.ExecutionHandle)
        assert (by_object.id, by_object.workflow) == ("greet/obj", "greet")
        assert (by_name.id, by_name.workflow) == ("greet/str", "greet")
        assert await by_object.result() == "HELLO ADA"
        assert await by_name.result() == "HELLO BOB!"
        again = await env.start_execution("greet", {"name": "bob", "excited": True}, name="str")
        assert again.already_running
        with pytest.raises(ev.ExecutionAlreadyExists):
            await env.start_execution("greet", {"name": "eve"}, name="str")


async def test_start_execution_without_name_or_input() -> None:
    async with make_env() as env:
        handle = await env.start_execution("broken")
        assert handle.id.startswith("broken/")
        assert len(handle.id) > len("broken/")
        with pytest.raises(ev.ExecutionFailed) as info:
            await handle.result()
        assert (info.value.error, info.value.message) == ("LookupError", "nothing here")


async def test_start_execution_timeout() -> None:
    async with make_env() as env:
        handle = await env.start_execution("naps", timeout="45m")
        with pytest.raises(ev.WorkflowTimeout):
            await handle.result()
        execution = await env.get_execution(handle.id)
        assert execution.error == "WorkflowTimeout"
        assert execution.end_time == T0 + timedelta(minutes=45)
        # the definition's own 2h applies without a per-start timeout
        other = await env.start_execution(naps)
        with pytest.raises(ev.WorkflowTimeout):
            await other.result()
        assert (await env.get_execution(other.id)).end_time == env.now
        assert env.now == T0 + timedelta(minutes=45) + timedelta(hours=2)


async def test_start_execution_validates_input() -> None:
    async with make_env() as env:
        with pytest.raises(ev.InputValidationError) as info:
            await env.start_execution("greet", {"excited": "very"})
        assert "name" in str(info.value)
        assert env.executions() == []


async def test_unknown_workflow_name_raises_naming_it() -> None:
    async with make_env() as env:
        with pytest.raises(ev.EventualError, match="no_such_workflow"):
            await env.start_execution("no_such_workflow", {})
        assert env.executions() == []


async def test_workflow_defined_in_two_served_services_raises_naming_both() -> None:
    first = ev.Service("tests-protocol-first")

    @ev.workflow(name="protocol_dup")
    async def dup_in_first() -> str:
        return "first"

    second = ev.Service("tests-protocol-second")

    @ev.workflow(name="protocol_dup")
    async def dup_in_second() -> str:
        return "second"

    ev.Service(SERVICE.name)  # make this module's service current again
    async with ev.testing.TestEnvironment(services=[first, second], start=T0) as env:
        with pytest.raises(ev.EventualError) as info:
            await env.start_execution("protocol_dup")
        assert "tests-protocol-first" in str(info.value)
        assert "tests-protocol-second" in str(info.value)
        with pytest.raises(ev.EventualError):
            await dup_in_first.start()
        assert env.executions() == []
    # restricted to one of them, the same name is fine
    async with ev.testing.TestEnvironment(service=second, start=T0):
        assert await dup_in_second() == "second"


# ------------------------------------------------------------------------------------------ reading executions


async def test_get_execution_fields() -> None:
    async with make_env() as env:
        handle = await env.start_execution(greet, Greeting(name="ada"), name="fields")
        running = await env.get_execution(handle.id)
        assert isinstance(running, ev.Execution)
        assert running.status == ev.ExecutionStatus.IN_PROGRESS
        assert (running.id, running.workflow) == ("greet/fields", "greet")
        assert running.input == {"name": "ada", "excited": False}
        assert running.result is None
        assert running.end_time is None
        assert running.parent is None
        assert running.start_time == T0
        await env.advance("5m")
        await handle.result()
        done = await env.get_execution(handle.id)
        assert done.status == ev.ExecutionStatus.SUCCEEDED
        assert done.result == "HELLO ADA"
        assert done.error is None
        assert done.message is None
        assert done.end_time == T0  # advance() ran what was due now before moving the clock
        assert await handle.status() == done

        failed = await env.start_execution(broken)
        with pytest.raises(ev.ExecutionFailed):
            await failed.result()
        execution = await env.get_execution(failed.id)
        assert (execution.status, execution.error, execution.message) == (
            ev.ExecutionStatus.FAILED,
            "LookupError",
            "nothing here",
        )


async def test_get_execution_reports_the_parent_of_a_child() -> None:
    async with make_env() as env:
        parent = await env.start_execution(parent_greets, name="pg")
        assert await parent.result() == "HELLO CHILD"
        child_id = "greet/~parent_greets-pg-0"
        child = await env.get_execution(child_id)
        assert child.parent == "parent_greets/pg"
        assert child.workflow == "greet"
        assert (await env.get_execution(parent.id)).parent is None


async def test_list_executions_filters_and_sorts() -> None:
    async with make_env() as env:
        ok = await env.start_execution(greet, Greeting(name="a"), name="a")
        await env.advance("1m")
        bad = await env.start_execution(broken, name="b")
        await env.advance("1m")
        sleeping = await env.start_execution(naps, name="c")
        await env.tick()
        greet_only = await env.list_executions(workflow="greet")
        assert [e.id for e in greet_only.executions] == [ok.id]
        assert greet_only.next_token is None

        failed = await env.list_executions(statuses=[ev.ExecutionStatus.FAILED])
        assert [e.id for e in failed.executions] == [bad.id]
        several = await env.list_executions(statuses=[ev.ExecutionStatus.SUCCEEDED, ev.ExecutionStatus.IN_PROGRESS])
        assert [e.id for e in several.executions] == [ok.id, sleeping.id]
        by_string = await env.list_executions(statuses=["IN_PROGRESS"])  # type: ignore[list-item]
        assert [e.id for e in by_string.executions] == [sleeping.id]

        ascending = await env.list_executions()
        descending = await env.list_executions(sort="desc")
        assert [e.id for e in ascending.executions] == [ok.id, bad.id, sleeping.id]
        assert [e.id for e in descending.executions] == [sleeping.id, bad.id, ok.id]
        assert all(isinstance(e, ev.Execution) for e in ascending.executions)
        assert (await env.list_executions(workflow="no_such_workflow")).executions == []


@pytest.mark.parametrize("page_size", [1, 2, 3, 7, 100])
@pytest.mark.parametrize("sort", ["asc", "desc"])
async def test_list_executions_pages_cover_every_item_exactly_once(page_size: int, sort: str) -> None:
    async with make_env() as env:
        started = []
        for index in range(7):
            started.append((await env.start_execution(greet, Greeting(name=f"n{index}"), name=f"n{index}")).id)
            if index % 2:
                await env.advance("1s")
        seen: list[str] = []
        token = None
        pages = 0
        while True:
            page = await env.list_executions(next_token=token, max_results=page_size, sort=sort)
            assert len(page.executions) <= page_size
            seen.extend(e.id for e in page.executions)
            pages += 1
            token = page.next_token
            if token is None:
                break
            assert pages < 20
        assert seen == (started if sort == "asc" else started[::-1])
        assert pages == max(1, -(-len(started) // page_size))


async def test_get_execution_history_is_the_whole_history_oldest_first() -> None:
    async with make_env() as env:
        handle = await env.start_execution(greet, Greeting(name="h"))
        await handle.result()
        history = await env.get_execution_history(handle.id)
        assert history == await handle.history()
        assert [e.type for e in history] == [
            "WorkflowStarted",
            "ActivityScheduled",
            "ActivitySucceeded",
            "WorkflowSucceeded",
        ]
        assert history[0].workflow == "greet"
        assert history[0].seq is None
        assert (history[1].seq, history[1].name, history[1].input) == (0, "shout", {"text": "hello h"})
        assert history[2].result == "HELLO H"
        assert [e.timestamp for e in history] == sorted(e.timestamp for e in history)


async def test_get_execution_logs_from_workflow_and_activity() -> None:
    async with make_env() as env:
        handle = await env.start_execution(greet, Greeting(name="log"))
        await handle.result()
        logs = await env.get_execution_logs(handle.id)
        assert logs == await handle.logs()
        assert [(entry.source, entry.message) for entry in logs] == [
            ("workflow", "greeting log"),
            ("shout", "shouting hello log"),
        ]
        assert all(isinstance(entry, ev.LogEntry) and entry.time == T0 for entry in logs)


# ------------------------------------------------------------------------------------------ signals, events, cancel


async def test_send_signal_by_signal_object_and_by_name() -> None:
    async with make_env() as env:
        handle = await env.start_execution(decides)
        await env.tick()
        await env.send_signal(handle.id, decision, Decision(ok=True))
        await env.send_signal(handle, "decision", {"ok": False})
        assert await handle.result() == [True, False]
        received = [e for e in await handle.history() if e.type == "SignalReceived"]
        assert [(e.signal, e.payload, e.seq) for e in received] == [
            ("decision", {"ok": True}, None),
            ("decision", {"ok": False}, None),
        ]
        with pytest.raises(ev.EventualError, match="SUCCEEDED"):
            await env.send_signal(handle.id, decision, Decision(ok=True))


async def test_send_signal_with_id_is_delivered_once() -> None:
    async with make_env() as env:
        handle = await env.start_execution(counts_pokes)
        await env.tick()
        await env.send_signal(handle.id, "poke", None, id="same")
        await env.send_signal(handle.id, poke, None, id="same")
        await env.send_signal(handle.id, poke, None, id="other")
        assert await handle.result() == 2


async def test_send_signal_validates_the_payload() -> None:
    async with make_env() as env:
        handle = await env.start_execution(decides)
        await env.tick()
        with pytest.raises(ev.InputValidationError):
            await env.send_signal(handle.id, decision, {"ok": "perhaps"})
        assert not [e for e in await handle.history() if e.type == "SignalReceived"]


async def test_publish_events_reaches_subscriptions() -> None:
    WELCOMED.clear()
    async with make_env() as env:
        await env.publish_events(AccountOpened(account_id="a1"), AccountOpened(account_id="a2"))
        await env.tick()
        assert sorted(WELCOMED) == ["a1", "a2"]
        assert env.published(AccountOpened) == [AccountOpened(account_id="a1"), AccountOpened(account_id="a2")]
        assert await env.list_dead_letters() == []


async def test_list_dead_letters_after_retries_run_out() -> None:
    async with make_env() as env:
        await env.publish_events(Poison(why="bones"))
        await env.tick()
        assert await env.list_dead_letters() == []  # one attempt so far, a retry is due in 10s
        await env.advance("10s")
        letters = await env.list_dead_letters()
        assert len(letters) == 1
        letter = letters[0]
        assert isinstance(letter, ev.DeadLetter)
        assert letter.subscription == "protocol-poison"
        assert letter.error == "ValueError"
        assert letter.message == "cannot digest bones"
        assert letter.attempts == 2
        assert letter.event["event"] == {"why": "bones"}
        assert letters == env.dead_letters()


async def test_cancel_execution() -> None:
    async with make_env() as env:
        handle = await env.start_execution(naps)
        await env.tick()
        await env.cancel_execution(handle.id)
        with pytest.raises(ev.ExecutionCancelled):
            await handle.result()
        execution = await env.get_execution(handle.id)
        assert execution.status == ev.ExecutionStatus.CANCELLED
        assert execution.end_time == T0
        with pytest.raises(ev.EventualError):
            await env.cancel_execution(handle.id)


# ------------------------------------------------------------------------------------------ activity completion


async def test_send_activity_success_and_heartbeat() -> None:
    TOKENS.clear()
    async with make_env() as env:
        handle = await env.start_execution(waits_external, "order-1")
        await env.tick()
        assert len(TOKENS) == 1
        token = TOKENS[0]
        beat = await env.send_activity_heartbeat(token)
        assert isinstance(beat, ev.HeartbeatResponse)
        assert beat.cancelled is False
        await env.advance("3h")
        await env.send_activity_success(token, "shipped")
        assert await handle.result() == {"result": "shipped"}
        history = await handle.history()
        done = [e for e in history if e.type == "ActivitySucceeded"]
        assert len(done) == 1
        assert done[0].result == "shipped"
        assert done[0].timestamp == T0 + timedelta(hours=3)
        # the token is spent
        with pytest.raises(ev.EventualError):
            await env.send_activity_success(token, "again")
        assert (await env.send_activity_heartbeat(token)).cancelled is True


async def test_send_activity_failure() -> None:
    TOKENS.clear()
    async with make_env() as env:
        handle = await env.start_execution(waits_external, "order-2")
        await env.tick()
        await env.send_activity_failure(TOKENS[0], "OutOfStock", "no more widgets")
        assert await handle.result() == {"error": "OutOfStock", "message": "no more widgets"}
        failed = [e for e in await handle.history() if e.type == "ActivityFailed"]
        assert [(e.error, e.message, e.attempts) for e in failed] == [("OutOfStock", "no more widgets", 1)]
        with pytest.raises(ev.EventualError):
            await env.send_activity_failure(TOKENS[0], "Again")


async def test_forged_token_is_rejected_and_records_nothing() -> None:
    TOKENS.clear()
    async with make_env() as env:
        handle = await env.start_execution(waits_external, "order-3")
        await env.tick()
        token = TOKENS[0]
        forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        before = await handle.history()
        with pytest.raises(ev.EventualError):
            await env.send_activity_success(forged, "stolen")
        assert await handle.history() == before
        await env.send_activity_success(token, "fine")
        assert await handle.result() == {"result": "fine"}


# ------------------------------------------------------------------------------------------ unknown ids


@pytest.mark.parametrize(
    "call",
    [
        lambda env: env.get_execution("greet/nope"),
        lambda env: env.get_execution_history("greet/nope"),
        lambda env: env.get_execution_logs("greet/nope"),
        lambda env: env.get_execution_waits("greet/nope"),
        lambda env: env.send_signal("greet/nope", decision, Decision(ok=True)),
        lambda env: env.send_signal("greet/nope", "decision", {"ok": True}),
        lambda env: env.cancel_execution("greet/nope"),
    ],
    ids=["get_execution", "history", "logs", "waits", "signal", "signal_by_name", "cancel"],
)
async def test_unknown_execution_ids_raise_execution_not_found(call: Any) -> None:
    async with make_env() as env:
        with pytest.raises(ev.ExecutionNotFound) as info:
            await call(env)
        assert "greet/nope" in str(info.value)
        assert info.value.execution_id == "greet/nope"


# ------------------------------------------------------------------------------------------ the declaration


def _implementations() -> list[type]:
    from eventual_nb.aws import AwsRuntime
    from eventual_nb.client import ServiceClient

    return [ev.testing.TestEnvironment, ev.LocalRuntime, AwsRuntime, ServiceClient]


@pytest.mark.parametrize("implementation", _implementations(), ids=lambda cls: cls.__name__)
def test_every_runtime_and_the_client_declare_the_one_protocol(implementation: type) -> None:
    """Each names `ServiceClientProtocol` as a base (what makes mypy check its signatures against the one
    declaration) and defines every method of it: none falls through to the protocol's bodiless stub."""
    protocol = runtime_base.ServiceClientProtocol
    assert protocol in implementation.__mro__
    methods = [name for name, member in vars(protocol).items() if inspect.iscoroutinefunction(member)]
    assert "wait_for_execution" in methods  # what `ExecutionHandle.result()` calls on every runtime and client
    assert set(methods) <= set(runtime_base.HOME_LOOP_METHODS)
    for name in methods:
        assert getattr(implementation, name) is not getattr(protocol, name), f"{implementation.__name__}.{name}"


# ------------------------------------------------------------------------------------------ which runtime


async def test_async_with_makes_the_env_current_inside_the_block_only() -> None:
    saved = runtime_base._default_runtime
    runtime_base.set_default_runtime(None)
    try:
        env = make_env()
        assert ev.current_runtime(required=False) is None
        async with env as entered:
            assert entered is env
            assert ev.current_runtime() is env
            inner = make_env()
            async with inner:
                assert ev.current_runtime() is inner
            assert ev.current_runtime() is env
            handle = await greet.start(Greeting(name="current"))
            assert handle.id in env.executions()
            assert handle.id not in inner.executions()
        assert ev.current_runtime(required=False) is None
    finally:
        runtime_base.set_default_runtime(saved)


async def test_starting_without_a_runtime_says_how_to_set_one() -> None:
    """Outside any `async with`, with no process-wide default (none open here), starting cannot work."""
    saved = runtime_base._default_runtime
    runtime_base.set_default_runtime(None)
    try:
        assert ev.current_runtime(required=False) is None
        with pytest.raises(ev.EventualError) as info:
            await greet.start(Greeting(name="nobody"))
        text = str(info.value)
        assert "no runtime" in text
        assert "async with" in text
        assert "TestEnvironment" in text
        with pytest.raises(ev.EventualError, match="async with"):
            await greet(Greeting(name="nobody"))
    finally:
        runtime_base.set_default_runtime(saved)


async def test_an_open_env_is_the_default_for_code_outside_its_context() -> None:
    """The first entered runtime becomes the process-wide default (for other tasks/threads) until it exits."""
    import asyncio
    import contextvars

    saved = runtime_base._default_runtime
    runtime_base.set_default_runtime(None)
    try:
        async with make_env() as env:
            outside = contextvars.Context()  # a context where the ContextVar was never set
            found = await asyncio.get_running_loop().run_in_executor(
                None, lambda: outside.run(lambda: ev.current_runtime(required=False))
            )
            assert found is env
        assert ev.current_runtime(required=False) is None
    finally:
        runtime_base.set_default_runtime(saved)
