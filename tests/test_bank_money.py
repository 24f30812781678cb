"""The bank-account tutorial never loses or creates money.

notebooks/bank-account.ipynb is exported with `eventual-nb export` once per module, and the package is
used two ways: served by a real `eventual-nb serve` process on 127.0.0.1 (LocalRuntime; the accounts are
entities in its SQLite database) and driven over HTTP; and imported into this process, where its
workflow runs in a TestEnvironment with mocked activities (the accounts in the environment's memory). The checks: numbers past the models' bounds
are 422s; every way a transfer can stop after its debit (its execution cancelled before, during or after
the debit, once or twice; a credit that times out or keeps failing; any other error) refunds the source
and publishes `TransferCancelled`; and a hypothesis state machine of customer moves against the served
tutorial finds no 5xx and no cent created or lost.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

import eventual_nb as ev
from eventual_nb.loader import load_target
from tests.test_exporter import Served, cli, serve

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "bank-account.ipynb"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bank-money") / "export"
    proc = cli("export", str(NOTEBOOK), "-o", str(directory))
    assert proc.returncode == 0, proc.stderr
    return directory


@pytest.fixture(scope="module")
def served(export_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The exported tutorial behind `eventual-nb serve`; its accounts are entities in the runtime's `state.db`."""
    server = serve(export_dir, tmp_path_factory.mktemp("bank-money-serve") / "state.db")
    yield server
    server.stop()


@pytest.fixture
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=30) as client:
        yield client


def open_account(http: httpx.Client, balance: int) -> str:
    answer = http.post("/accounts", json={"balance": balance})
    assert answer.status_code == 201, answer.text
    account_id: str = answer.json()["account_id"]
    return account_id


def balance(http: httpx.Client, account_id: str) -> int:
    answer = http.get(f"/accounts/{account_id}")
    assert answer.status_code == 200, answer.text
    value: int = answer.json()["balance"]
    return value


# ------------------------------------------------------------------------------------- bounded numbers

TOO_BIG: list[tuple[str, str, Any]] = [
    ("/accounts", "balance", 2**63),  # was a 500: SQLite's INTEGER is 64-bit
    ("/accounts", "balance", 10**12 + 1),
    ("/transfers", "cancel_window", 1e12),  # was a 202, then a debit and a workflow failing with ValueError
    ("/transfers", "cancel_window", 24 * 60 * 60 + 1),
    ("/transfers", "amount", 2**63),
]


@pytest.mark.parametrize(("path", "field", "value"), TOO_BIG, ids=[f"{p}.{f}={v}" for p, f, v in TOO_BIG])
def test_numbers_past_the_models_bounds_are_422_naming_the_field_and_move_no_money(
    http: httpx.Client, path: str, field: str, value: Any
) -> None:
    source, target = open_account(http, 100), open_account(http, 0)
    body: dict[str, Any] = (
        {"balance": value}
        if path == "/accounts"
        else {"source": source, "target": target, "amount": 1, "cancel_window": 0, field: value}
    )
    answer = http.post(path, json=body)
    assert answer.status_code == 422, answer.text
    assert [error["loc"] for error in answer.json()["detail"]] == [["body", field]]
    assert "less than or equal to" in answer.json()["detail"][0]["msg"]
    assert (balance(http, source), balance(http, target)) == (100, 0)


NOT_NUMBERS: list[tuple[str, str, Any]] = [
    ("/accounts", "balance", False),  # was a 201: an account opened with 0 (pydantic's lax int)
    ("/transfers", "amount", True),  # would have moved 1 cent
    ("/transfers", "cancel_window", False),  # was a 202 with no window
]


@pytest.mark.parametrize(("path", "field", "value"), NOT_NUMBERS, ids=[f"{p}.{f}={v}" for p, f, v in NOT_NUMBERS])
def test_booleans_are_not_amounts_or_windows(http: httpx.Client, path: str, field: str, value: Any) -> None:
    source, target = open_account(http, 100), open_account(http, 0)
    body: dict[str, Any] = (
        {"balance": value}
        if path == "/accounts"
        else {"source": source, "target": target, "amount": 1, "cancel_window": 0, field: value}
    )
    answer = http.post(path, json=body)
    assert answer.status_code == 422, answer.text
    assert [error["loc"] for error in answer.json()["detail"]] == [["body", field]]
    assert (balance(http, source), balance(http, target)) == (100, 0)


def test_the_routes_openapi_lists_the_errors_they_answer(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    assert "404" in paths["/accounts/{account_id}"]["get"]["responses"]
    assert "404" in paths["/transfers"]["post"]["responses"]
    assert {"400", "404"} <= set(paths["/transfers/{execution_id}/cancel"]["post"]["responses"])


# --------------------------------------------------------------- the workflow on the test runtime

# The exported package, imported into this process for the TestEnvironment tests; its accounts are
# entities of each test's environment.


@pytest.fixture(scope="module")
def bank(export_dir: Path) -> ModuleType:
    services = load_target(str(export_dir))
    assert [service.name for service in services] == ["bank"]
    assert {entity["name"] for entity in services[0].spec()["entities"]} == {
        "accounts",
        "operations",
        "statement_lines",
    }
    return sys.modules["bank"]


async def open_pair(bank: ModuleType, source_balance: int = 50_00) -> tuple[str, str]:
    source = await bank.open_account(bank.OpenAccount(balance=source_balance))
    target = await bank.open_account(bank.OpenAccount(balance=0))
    return source.account_id, target.account_id


async def balances(bank: ModuleType, *account_ids: str) -> tuple[int, ...]:
    return tuple([await bank.balance(account_id) for account_id in account_ids])


async def test_cancelling_the_execution_after_the_debit_refunds_and_publishes_transfer_cancelled(
    bank: ModuleType,
) -> None:
    async with ev.testing.TestEnvironment(service="bank") as env:
        source, target = await open_pair(bank)
        handle = await bank.transfer.start(bank.TransferRequest(source=source, target=target, amount=20_00))
        await env.advance("1 minute")
        assert await balances(bank, source, target) == (30_00, 0)  # debited; the window is open
        await handle.cancel()
        with pytest.raises(ev.ExecutionCancelled):
            await handle.result()
        assert (await handle.status()).status == ev.ExecutionStatus.CANCELLED
        assert await balances(bank, source, target) == (50_00, 0)
        (cancelled,) = env.published(bank.TransferCancelled)
        assert (cancelled.transfer_id, cancelled.source, cancelled.amount) == (handle.id, source, 20_00)
        assert cancelled.reason == "the execution was cancelled"
        assert await bank.statement(source) == [f"cancelled: 20.00 to {target} (the execution was cancelled)"]
        assert env.published(bank.TransferCompleted) == []


@pytest.mark.parametrize("cancels", [1, 2])
async def test_cancelling_while_the_debit_is_under_way_waits_for_it_and_refunds_once(
    bank: ModuleType, cancels: int
) -> None:
    """The cancellation arrives before the debit's result: the debit is not abandoned half-way (it runs
    and is refunded), and a second cancel does not interrupt the refund."""
    async with ev.testing.TestEnvironment(service="bank") as env:
        source, target = await open_pair(bank)
        handle = await bank.transfer.start(bank.TransferRequest(source=source, target=target, amount=20_00))
        for _ in range(cancels):
            await handle.cancel()
        with pytest.raises(ev.ExecutionCancelled):
            await handle.result()
        history = await handle.history()
        assert [event.type for event in history][:3] == ["WorkflowStarted", "ActivityScheduled", "CancelRequested"]
        assert [e.name for e in history if e.type == "ActivityScheduled"] == ["debit", "refund"]
        assert await balances(bank, source, target) == (50_00, 0)
        assert [event.reason for event in env.published(bank.TransferCancelled)] == ["the execution was cancelled"]


@pytest.mark.parametrize("credit_fails", ["times out", "fails on every attempt"])
async def test_a_credit_that_cannot_finish_refunds_the_source(bank: ModuleType, credit_fails: str) -> None:
    """A timed-out credit raises `ev.Timeout`, not `ev.ActivityFailed`; and a refund made with the failing
    activity itself would fail too: both lost the money before."""
    async with ev.testing.TestEnvironment(service="bank") as env:
        source, target = await open_pair(bank)
        mock = env.mock_activity(bank.credit)
        if credit_fails == "times out":
            mock.timeout()
        else:
            mock.fail(ConnectionError("the bank is down"))
        handle = await bank.transfer.start(
            bank.TransferRequest(source=source, target=target, amount=20_00, cancel_window=0)
        )
        outcome = await handle.result()
        assert outcome.status == "refunded", outcome
        assert await balances(bank, source, target) == (50_00, 0)
        (cancelled,) = env.published(bank.TransferCancelled)
        assert cancelled.reason.startswith("credit failed: ")


async def test_any_other_error_after_the_debit_refunds_then_fails_the_execution(
    bank: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step after the debit raises something that is neither ActivityFailed nor Timeout (a bug: here the
    tutorial's `credit` replaced by a function that raises): the source is refunded, then the execution
    fails with that error."""

    async def broken_credit(account_id: str, amount: int) -> int:
        raise RuntimeError("a bug after the debit")

    async with ev.testing.TestEnvironment(service="bank") as env:
        source, target = await open_pair(bank)
        monkeypatch.setattr(bank, "credit", broken_credit)
        handle = await bank.transfer.start(
            bank.TransferRequest(source=source, target=target, amount=20_00, cancel_window=0)
        )
        with pytest.raises(ev.ExecutionFailed) as failed:
            await handle.result()
        assert (failed.value.error, failed.value.message) == ("RuntimeError", "a bug after the debit")
        assert await balances(bank, source, target) == (50_00, 0)
        (cancelled,) = env.published(bank.TransferCancelled)
        assert cancelled.reason == "RuntimeError: a bug after the debit"


# ----------------------------------------------------------------- the served export (LocalRuntime)


def wait_until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


@pytest.mark.parametrize("when", ["after the debit", "at once", "twice"])
async def test_cancelling_a_served_execution_refunds_and_writes_the_statement(
    served: Served, http: httpx.Client, when: str
) -> None:
    """`eventual-nb cancel ID` and the widget's Cancel button go through this internal route."""
    source, target = open_account(http, 100_00), open_account(http, 0)
    body = {"source": source, "target": target, "amount": 40_00, "cancel_window": 600}
    started = await asyncio.to_thread(http.post, "/transfers", json=body)
    assert started.status_code == 202, started.text
    execution_id = started.json()["execution_id"]
    if when == "after the debit":
        wait_until(lambda: balance(http, source) == 60_00, "the debit")
    async with ev.ServiceClient(served.url) as client:
        await client.cancel_execution(execution_id)
        if when == "twice":  # the second lands during the refund, or after the end (the runtime is quick)
            refused: ev.EventualError | None = None
            try:
                await client.cancel_execution(execution_id)
            except ev.EventualError as error:
                refused = error
            assert refused is None or "already ended CANCELLED" in refused.message
        ended = await client.wait_for_execution(execution_id, timeout=60)
        assert ended.status == ev.ExecutionStatus.CANCELLED, ended
        history = await client.get_execution_history(execution_id)
    assert (balance(http, source), balance(http, target)) == (100_00, 0)
    assert [event.name for event in history if event.type == "ActivityScheduled"] == ["debit", "refund"]
    line = f"cancelled: 40.00 to {target} (the execution was cancelled)"
    wait_until(lambda: http.get(f"/accounts/{source}").json()["statement"] == [line], "the statement line")


def test_a_transfer_naming_an_unknown_account_is_404_and_moves_nothing(http: httpx.Client) -> None:
    source = open_account(http, 100)
    for body in ({"source": source, "target": "nobody"}, {"source": "nobody", "target": source}):
        answer = http.post("/transfers", json={**body, "amount": 1, "cancel_window": 0})
        assert answer.status_code == 404, answer.text
        assert answer.json()["message"] == "no account 'nobody'"
    assert balance(http, source) == 100


# ------------------------------------------------------------------------------ the state machine

#: JSON values of every kind, for fields a client may fill with anything
ANY_JSON = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8)
)
#: a cancel window: a short one (time is real here) or one the model refuses; never a long valid one
WINDOW = st.one_of(
    st.sampled_from([0, 0.05, 0.3, 1]),
    st.floats(0, 1),
    st.integers(max_value=-1),
    st.integers(min_value=24 * 60 * 60 + 1),
    st.floats(max_value=-0.001) | st.floats(min_value=86_400.001),
    st.sampled_from([None, True, False, "soon", "inf", "nan", [], {}]),
)
SETTLE_SECONDS = 60.0
NO_BODY = object()


class TheBank(RuleBasedStateMachine):
    """A customer's every move against the served tutorial; money is conserved throughout.

    After every step no answer was a 5xx and, read in one SQLite transaction from the server's database (the
    `accounts` entity's rows), the machine's accounts hold at most what was deposited and at least that
    minus the transfers still in flight; once every execution has ended, exactly what was deposited.
    """

    url: ClassVar[str]
    state_db: ClassVar[Path]
    accounts = Bundle("accounts")
    transfers = Bundle("transfers")

    def __init__(self) -> None:
        super().__init__()
        self.http = httpx.Client(base_url=self.url, timeout=60)
        self.deposited = 0
        self.opened: list[str] = []
        self.in_flight: dict[str, int] = {}  # execution id -> amount it may have debited

    def request(self, method: str, path: str, *, body: Any = NO_BODY, **options: Any) -> httpx.Response:
        if body is not NO_BODY:  # json.dumps writes NaN and Infinity, as some clients do; httpx refuses them
            options.update(content=json.dumps(body).encode(), headers={"content-type": "application/json"})
        answer = self.http.request(method, path, **options)
        assert answer.status_code < 500, f"{method} {path} {options} answered {answer.status_code}: {answer.text}"
        return answer

    def opened_account(self, answer: httpx.Response) -> str:
        account = answer.json()
        self.deposited += account["balance"]
        self.opened.append(account["account_id"])
        account_id: str = account["account_id"]
        return account_id

    def started(self, answer: httpx.Response) -> str:
        execution_id: str = answer.json()["execution_id"]
        execution = self.request("GET", f"/_eventual/executions/{execution_id}").json()
        self.in_flight[execution_id] = execution["input"]["amount"]
        return execution_id

    # -- accounts

    @initialize(target=accounts, amounts=st.lists(st.integers(0, 100_00), min_size=2, max_size=4))
    def open_some_accounts(self, amounts: list[int]) -> MultipleResults[str]:
        return multiple(*(self.open_account(amount) for amount in amounts))

    @rule(target=accounts, amount=st.integers(0, 100_00))
    def open_account(self, amount: int) -> str:
        answer = self.request("POST", "/accounts", json={"balance": amount})
        assert answer.status_code == 201, answer.text
        return self.opened_account(answer)

    @rule(body=st.one_of(st.fixed_dictionaries({}, optional={"balance": ANY_JSON}), ANY_JSON))
    def open_account_with_any_body(self, body: Any) -> None:
        answer = self.request("POST", "/accounts", body=body)
        assert answer.status_code in (201, 422), answer.text
        if answer.status_code == 201:  # lax pydantic: 5.0, "5" and true are whole numbers of cents too
            self.opened_account(answer)

    @rule(
        body=st.sampled_from([b"", b"{", b"[]", b'{"balance": 1', b"\xff"]),
        path=st.sampled_from(["/accounts", "/transfers"]),
    )
    def send_a_body_that_is_not_json(self, body: bytes, path: str) -> None:
        answer = self.request("POST", path, content=body, headers={"content-type": "application/json"})
        assert answer.status_code in (400, 422), answer.text

    @rule(account_id=st.text(min_size=1, max_size=8).filter(lambda text: "/" not in text and text.strip(".")))
    def look_up_an_unknown_account(self, account_id: str) -> None:
        answer = self.request("GET", "/accounts/" + quote(account_id, safe=""))
        assert answer.status_code == 404, answer.text

    # -- transfers

    @rule(target=transfers, source=accounts, to=accounts, amount=st.integers(1, 150_00), window=st.floats(0, 1))
    def transfer(self, source: str, to: str, amount: int, window: float) -> str:
        body = {"source": source, "target": to, "amount": amount, "cancel_window": window}
        answer = self.request("POST", "/transfers", body=body)
        assert answer.status_code == 202, answer.text
        return self.started(answer)

    @rule(
        source=accounts,
        to=accounts,
        amount=st.integers(1, 150_00),
        window=st.floats(0.05, 0.6),
        after=st.floats(0, 1),
        signal=st.booleans(),
        execution_cancels=st.integers(0, 2),
    )
    def transfer_then_change_ones_mind(
        self, source: str, to: str, amount: int, window: float, after: float, signal: bool, execution_cancels: int
    ) -> None:
        """Call the transfer off and/or cancel its execution `after` (a fraction of the window) into the
        window: mostly once the debit is done, which is when the money was lost before."""
        execution_id = self.transfer(source, to, amount, window)
        time.sleep(after * window)
        if signal:
            self.call_the_transfer_off(execution_id, "changed my mind")
        for _ in range(execution_cancels):
            self.cancel_the_execution(execution_id)

    @rule(data=st.data())
    def transfer_with_any_body(self, data: st.DataObject) -> None:
        party = st.sampled_from(self.opened) | ANY_JSON if self.opened else ANY_JSON
        fields = {"source": party, "target": party, "amount": ANY_JSON, "cancel_window": WINDOW}
        body = data.draw(st.fixed_dictionaries({}, optional=fields) | ANY_JSON, label="body")
        answer = self.request("POST", "/transfers", body=body)
        assert answer.status_code in (202, 404, 422), answer.text
        if answer.status_code == 202:
            self.started(answer)

    @rule(execution_id=transfers, reason=st.text(max_size=12))
    def call_the_transfer_off(self, execution_id: str, reason: str) -> None:
        answer = self.request("POST", f"/transfers/{execution_id}/cancel", params={"reason": reason})
        if answer.status_code != 202:  # it ended: the answer says so
            assert answer.status_code == 400, answer.text
            assert execution_id in answer.json()["message"], answer.text

    @rule(execution_id=transfers)
    def cancel_the_execution(self, execution_id: str) -> None:
        answer = self.request("POST", f"/_eventual/cancel/{execution_id}")
        if answer.status_code != 202:
            assert answer.status_code == 400, answer.text
            assert "already ended" in answer.json()["message"], answer.text

    @rule()
    def wait_for_every_transfer_to_end(self) -> None:
        deadline = time.monotonic() + SETTLE_SECONDS
        for execution_id in list(self.in_flight):
            remaining = max(0.0, deadline - time.monotonic())
            answer = self.request("GET", f"/_eventual/result/{execution_id}", params={"timeout": min(remaining, 30)})
            assert answer.json()["status"] != "IN_PROGRESS", f"{execution_id} still runs after {SETTLE_SECONDS} s"
        self.money_is_conserved()
        assert not self.in_flight

    # -- the rule

    @invariant()
    def money_is_conserved(self) -> None:
        for execution_id in list(self.in_flight):
            if self.request("GET", f"/_eventual/executions/{execution_id}").json()["status"] != "IN_PROGRESS":
                del self.in_flight[execution_id]
        if not self.opened:
            return
        with closing(sqlite3.connect(f"file:{self.state_db}?mode=ro", uri=True, timeout=30)) as db:
            marks = ", ".join("?" * len(self.opened))
            (held,) = db.execute(
                "SELECT SUM(json_extract(value, '$.balance')) FROM entities "
                f"WHERE entity = 'accounts' AND partition IN ({marks})",
                self.opened,
            ).fetchone()
        in_flight = sum(self.in_flight.values())
        assert held <= self.deposited, f"money was created: {held} held, {self.deposited} deposited"
        assert held >= self.deposited - in_flight, (
            f"money was lost: {held} held, {self.deposited} deposited, at most {in_flight} in flight"
        )

    def teardown(self) -> None:
        try:
            self.wait_for_every_transfer_to_end()
        finally:
            self.http.close()


@pytest.mark.timeout(300)  # a fuzz run in real time, on a shared machine
def test_money_is_conserved_under_every_move_a_customer_makes(served: Served) -> None:
    TheBank.url = served.url
    TheBank.state_db = served.log.parent / "state.db"  # the --db of `served`
    run_state_machine_as_test(
        TheBank,
        settings=settings(
            max_examples=30,
            stateful_step_count=30,
            deadline=None,
            # no shrinking: it replays steps against real time, where it is slow and not reproducible
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
