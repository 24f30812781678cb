"""The bank-account tutorial never loses or creates money (issue 12, part 1).

notebooks/bank-account.ipynb is exported with `eventual-nb export` once per module and its package is used
the way a user uses it: served by a real `eventual-nb serve` process on 127.0.0.1 (LocalRuntime, accounts
in a SQLite file beside its database) and driven over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

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
    """The exported tutorial behind `eventual-nb serve`; its accounts live in `.eventual/accounts.db` of its cwd."""
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
