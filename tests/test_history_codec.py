"""History events are read and written by msgspec (`eventual_nb.engine.history.Codec`); what is stored and
served must not change. `fixtures/history_pydantic.jsonl` holds one event of every type exactly as the
pydantic models wrote them before (the rows of a LocalRuntime's `history` table, the items on AWS)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eventual_nb.engine.history import (
    EVENT_ADAPTER,
    EVENT_TYPES,
    HISTORY_ADAPTER,
    ActivityScheduled,
    TimerScheduled,
    describe_event,
    dump_history,
    parse_history,
)

WRITTEN_BEFORE = Path(__file__).parent / "fixtures" / "history_pydantic.jsonl"


def written_before() -> list[str]:
    return WRITTEN_BEFORE.read_text(encoding="utf-8").splitlines()


def test_the_fixture_has_one_event_of_every_type() -> None:
    assert sorted(json.loads(line)["type"] for line in written_before()) == sorted(EVENT_TYPES)


@pytest.mark.parametrize("line", written_before(), ids=lambda line: json.loads(line)["type"])
def test_an_event_written_by_the_pydantic_models_reads_back_and_writes_the_same_json(line: str) -> None:
    event = EVENT_ADAPTER.validate_json(line)
    assert event.type == json.loads(line)["type"]
    assert json.loads(event.model_dump_json()) == json.loads(line)
    assert event.model_dump(mode="json") == json.loads(line)
    assert EVENT_ADAPTER.validate_python(json.loads(line)) == event


def test_a_whole_history_reads_from_its_json_text_its_dicts_or_its_events() -> None:
    text = "[" + ",".join(written_before()) + "]"
    events = parse_history(text)
    assert parse_history(json.loads(text)) == events
    assert parse_history(events) is not events
    assert parse_history(events) == events
    assert dump_history(events) == json.loads(text)
    assert HISTORY_ADAPTER.dump_python(events) == json.loads(text)


def test_datetimes_keep_their_offset_and_microseconds() -> None:
    event = EVENT_ADAPTER.validate_json(written_before()[0])
    assert event.timestamp == datetime(2025, 3, 30, 0, 59, 59, 999999, tzinfo=UTC)
    assert event.model_dump(mode="python")["timestamp"] == event.timestamp


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"type": "NoSuchEvent", "timestamp": "2025-01-01T00:00:00Z"}, "NoSuchEvent"),
        ({"type": "ActivityScheduled", "timestamp": "2025-01-01T00:00:00Z"}, "name"),
        ({"type": "ActivityScheduled", "timestamp": "2025-01-01T00:00:00Z", "name": "a", "colour": 1}, "colour"),
        ({"type": "TimerScheduled", "timestamp": "2025-01-01T00:00:00Z", "until": "soon"}, "until"),
    ],
)
def test_a_malformed_event_is_refused_with_the_field_named(data: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        EVENT_ADAPTER.validate_python(data)
    with pytest.raises(ValueError, match=named):
        EVENT_ADAPTER.validate_json(json.dumps(data))


def test_the_history_tables_describe_events_from_their_json_values() -> None:
    scheduled = ActivityScheduled(seq=0, timestamp=datetime(2025, 1, 1, tzinfo=UTC), name="debit", input={"a": 1})
    assert describe_event(scheduled) == 'name=debit input={"a":1}'
    timer = TimerScheduled(seq=1, timestamp=datetime(2025, 1, 1, tzinfo=UTC), until=datetime(2025, 1, 2, tzinfo=UTC))
    assert describe_event(timer) == "until=2025-01-02T00:00:00Z"
