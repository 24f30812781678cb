"""`import eventual_nb` loads the decorators, not what only running needs (DESIGN: the SDK imports without
Jupyter, FastAPI or boto3; here also without SQLite, the test runtime or the HTTP client), and every public
name still resolves on first use."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
import eventual_nb as ev
loaded = sorted(name for name in sys.modules if name.split(".")[0] in {
    "sqlite3", "httpx", "fastapi", "uvicorn", "rich", "boto3", "eventual_nb"})
print(json.dumps(loaded))
"""


def loaded_by_import() -> list[str]:
    completed = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(completed.stdout)


def test_importing_the_sdk_loads_no_runtime_database_client_or_server() -> None:
    loaded = loaded_by_import()
    for module in ("sqlite3", "httpx", "fastapi", "uvicorn", "rich", "boto3"):
        assert module not in loaded
    for module in (
        "eventual_nb.testing",
        "eventual_nb.runtime.local",
        "eventual_nb.client",
        "eventual_nb.runtime.testing",
    ):
        assert module not in loaded


def test_every_public_name_resolves_and_lazy_ones_are_the_defining_objects() -> None:
    import eventual_nb as ev
    from eventual_nb import testing
    from eventual_nb.client import ServiceClient
    from eventual_nb.engine.history import HistoryEvent, LogEntry
    from eventual_nb.runtime.core.schedules import ScheduleInfo
    from eventual_nb.runtime.local import LocalRuntime

    for name in ev.__all__:
        assert getattr(ev, name) is not None, name
    assert ev.testing is testing
    assert ev.ServiceClient is ServiceClient
    assert ev.LocalRuntime is LocalRuntime
    assert ev.ScheduleInfo is ScheduleInfo
    assert ev.LogEntry is LogEntry
    assert ev.HistoryEvent == HistoryEvent


def test_an_unknown_name_is_an_attribute_error() -> None:
    import eventual_nb as ev

    with pytest.raises(AttributeError, match="NoSuchThing"):
        ev.NoSuchThing  # noqa: B018


def test_importing_the_sdk_builds_no_pydantic_model() -> None:
    """pydantic builds a model's validator on first use, not at import (the first build also loads pydantic's
    plugin machinery: together a tenth of `import eventual_nb`)."""
    probe = """
import json, sys
import eventual_nb as ev
from eventual_nb.retry import RetryPolicy
from eventual_nb.runtime.base import Execution
built = {cls.__name__: cls.__pydantic_complete__ for cls in (ev.Event, RetryPolicy, Execution)}
print(json.dumps({"built": built, "plugins": "pydantic.plugin._loader" in sys.modules}))
"""
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    found = json.loads(completed.stdout)
    assert found == {"built": {"Event": False, "RetryPolicy": False, "Execution": False}, "plugins": False}


def test_the_cores_modules_and_names_resolve_on_first_use() -> None:
    probe = """
from eventual_nb.runtime import core
print(core.wire.__name__, core.limits.__name__, core.turn.__module__, core.default_retry().max_attempts)
"""
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert completed.stdout.split() == [
        "eventual_nb.runtime.core.wire",
        "eventual_nb.runtime.core.limits",
        "eventual_nb.runtime.core.execution",
        "1",
    ]
