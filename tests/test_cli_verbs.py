"""The service-client verbs and `serve` of the ``eventual-nb`` command line, run the way a user runs them:
each CLI call is a real subprocess (``python -m eventual_nb.cli``) talking over HTTP to a real
``eventual-nb serve tests/fixtures/cli_service.py`` process on the local runtime (SQLite in a temp dir).

The fixture service (tests/fixtures/cli_service.py): ``approve(order)`` waits for the ``approval``
signal, calls the ``notify`` activity and publishes ``OrderApproved``; the ``ship-approved-orders``
subscription starts ``ship/order-<id>`` for each published order; ``echo`` returns its input.
tests/fixtures/cli_service_changed.py is the same service after an incompatible edit (for ``replay``).

`load_target` (eventual_nb/loader.py), which ``serve`` and ``replay --target`` use to load code, is
tested in-process at the end.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import eventual_nb as ev
from eventual_nb.loader import TargetError, load_target

# The fixture service's own name: its definitions land in it when a test loads the fixture in-process.
SERVICE = ev.Service("cli-service")

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "cli_service.py"
CHANGED = ROOT / "tests" / "fixtures" / "cli_service_changed.py"
TERMINAL = ("WorkflowSucceeded", "WorkflowFailed", "WorkflowCancelled")


# -- harness ------------------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    """The subprocess environment without the user's EVENTUAL_* settings, so only what a test passes counts."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVENTUAL_")}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventual_nb.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env if env is not None else _env(),
    )


@dataclass
class Server:
    """A running `eventual-nb serve` process."""

    process: subprocess.Popen[str]
    url: str
    db: Path
    log: Path

    def cli(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--url", self.url, **kwargs)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a verb that must succeed, without a traceback."""
        proc = self.cli(*args)
        assert proc.returncode == 0, f"{args}: exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        assert "Traceback" not in proc.stderr
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json").stdout)

    def wait_status(self, id: str, *statuses: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            execution = self.json("execution", id)
            if execution["status"] in statuses:
                return dict(execution)
            assert time.monotonic() < deadline, f"{id} stayed {execution['status']}, expected {statuses}"
            time.sleep(0.1)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)
        return self.log.read_text()


def start_server(
    target: Path | str,
    db: Path | None,
    *,
    host: str = "127.0.0.1",
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    extra: Sequence[str] = (),
) -> Server:
    """Start `eventual-nb serve` (with `extra` options) and wait until its internal health route answers."""
    port = free_port()
    log = (db.parent if db is not None else cwd) / f"serve-{port}.log"
    args = [sys.executable, "-m", "eventual_nb.cli", "serve", str(target), "--port", str(port), "--host", host, *extra]
    if db is not None:
        args += ["--db", str(db)]
    with log.open("w") as sink:
        process = subprocess.Popen(
            args, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, text=True, env=env if env is not None else _env()
        )
    url = f"http://127.0.0.1:{port}"
    server = Server(process, url, db if db is not None else cwd / ".eventual" / "cli-service.db", log)
    deadline = time.monotonic() + 60
    headers = {"Authorization": f"Bearer {env['EVENTUAL_TOKEN']}"} if env and "EVENTUAL_TOKEN" in env else {}
    while True:
        if process.poll() is not None:
            raise AssertionError(f"eventual-nb serve exited {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/_eventual/health", headers=headers, timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"eventual-nb serve did not answer within 60 s:\n{log.read_text()}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(FIXTURE, tmp_path_factory.mktemp("serve") / "cli.db")
    yield running
    running.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def approved(server: Server, order: str, approver: str = "bob") -> str:
    """Run one `approve` execution to its end through the CLI; return its id."""
    id = f"approve/{order}"
    server.ok("start", "approve", json.dumps(order), "--name", order)
    assert server.ok("signal", id, "approval", approver).stdout.strip() == f"sent signal approval to {id}"
    server.wait_status(id, "SUCCEEDED")
    return id


class LineReader:
    """Collects a subprocess's stdout lines on a thread, so a test can wait for one with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert process.stdout is not None
        stream = process.stdout

        def pump() -> None:
            for line in stream:
                self._queue.put(line)
            self._queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no line with {text!r} in {self.lines}"
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            assert line is not None, f"output ended without {text!r}: {self.lines}"
            self.lines.append(line)

    def rest(self) -> list[str]:
        while (line := self._queue.get(timeout=30)) is not None:
            self.lines.append(line)
        return self.lines


def follow(server: Server, *args: str) -> tuple[subprocess.Popen[str], LineReader]:
    process = subprocess.Popen(
        [sys.executable, "-m", "eventual_nb.cli", "start", *args, "--follow", "--url", server.url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    return process, LineReader(process)


# -- workflows ----------------------------------------------------------------------------------------


def test_workflows_lists_the_served_workflows(server: Server) -> None:
    proc = server.ok("workflows")
    for name in ("approve", "ship", "echo"):
        assert name in proc.stdout
    assert "cli-service" in proc.stdout
    listed = server.json("workflows")
    assert sorted(item["name"] for item in listed) == ["approve", "echo", "ship"]
    assert {item["service"] for item in listed} == {"cli-service"}


# -- start --------------------------------------------------------------------------------------------


def test_start_then_execution_shows_it_in_progress(server: Server) -> None:
    order = unique("o")
    proc = server.ok("start", "approve", json.dumps(order), "--name", order)
    assert proc.stdout.strip() == f"started approve/{order}"
    shown = server.ok("execution", f"approve/{order}").stdout
    assert f"approve/{order}" in shown
    assert "IN_PROGRESS" in shown
    execution = server.json("execution", f"approve/{order}")
    assert execution["id"] == f"approve/{order}"
    assert execution["workflow"] == "approve"
    assert execution["status"] == "IN_PROGRESS"
    assert execution["input"] == order
    assert execution["end_time"] is None


def test_start_json_reports_the_execution_id(server: Server) -> None:
    body = server.json("start", "echo", '{"n": 1}')
    assert body["already_running"] is False
    assert body["execution_id"].startswith("echo/")
    assert server.wait_status(body["execution_id"], "SUCCEEDED")["result"] == {"n": 1}


def test_start_with_name_is_idempotent(server: Server) -> None:
    """A repeated start with the same --name and input is acknowledged, not run twice (Eventual's idempotent start);
    the same name with another input is an ExecutionAlreadyExists error."""
    name = unique("same")
    first = server.json("start", "echo", '"x"', "--name", name)
    again = server.json("start", "echo", '"x"', "--name", name)
    assert first == {"execution_id": f"echo/{name}", "already_running": False}
    assert again == {"execution_id": f"echo/{name}", "already_running": True}
    assert "already exists" in server.ok("start", "echo", '"x"', "--name", name).stdout
    listed = server.json("executions", "--workflow", "echo", "--max-results", "1000")["executions"]
    assert [item["id"] for item in listed].count(f"echo/{name}") == 1

    clash = server.cli("start", "echo", '"y"', "--name", name)
    assert clash.returncode == 1
    assert f"error: ExecutionAlreadyExists: execution 'echo/{name}' already exists" in clash.stderr
    body = json.loads(server.cli("start", "echo", '"y"', "--name", name, "--json").stdout)
    assert body["error"] == "ExecutionAlreadyExists"
    assert body["execution_id"] == f"echo/{name}"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("hello", "hello"),
        ('"hello"', "hello"),
        ("42", 42),
        ('{"a": [1, 2]}', {"a": [1, 2]}),
        ("not json {", "not json {"),
    ],
)
def test_start_input_is_json_or_else_a_plain_string(server: Server, text: str, value: Any) -> None:
    id = server.json("start", "echo", text)["execution_id"]
    execution = server.wait_status(id, "SUCCEEDED")
    assert execution["input"] == value
    assert execution["result"] == value


def test_start_unknown_workflow_and_invalid_input_are_errors(server: Server) -> None:
    proc = server.cli("start", "no-such-workflow")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: WorkflowNotFound: ")
    assert "no-such-workflow" in proc.stderr
    assert "Traceback" not in proc.stderr
    # approve takes a str: a JSON object is refused with pydantic's details, and nothing is started
    proc = server.cli("start", "approve", '{"order": 1}', "--json")
    assert proc.returncode == 1
    assert "error: InputValidationError:" in proc.stderr
    body = json.loads(proc.stdout)
    assert body["error"] == "InputValidationError"
    assert body["errors"]


def test_start_timeout_ends_a_waiting_execution(server: Server) -> None:
    name = unique("late")
    server.ok("start", "approve", '"never approved"', "--name", name, "--timeout", "1s")
    execution = server.wait_status(f"approve/{name}", "FAILED")
    assert execution["error"] == "WorkflowTimeout"
    bad = server.cli("start", "echo", "--timeout", "soon")
    assert bad.returncode == 2
    assert "--timeout" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_start_follow_streams_history_as_it_happens(server: Server) -> None:
    """--follow prints events as they are recorded: WorkflowStarted shows up while the execution still waits
    for its signal; the rest follows once the signal is sent, then the result, and the exit status is 0."""
    order = unique("f")
    process, reader = follow(server, "approve", json.dumps(order), "--name", order)
    try:
        reader.wait_for("WorkflowStarted")
        assert not any("WorkflowSucceeded" in line for line in reader.lines)
        assert process.poll() is None  # still following: the execution waits for approval
        server.ok("signal", f"approve/{order}", "approval", "carol")
        lines = reader.rest()
        assert process.wait(30) == 0, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
    text = "".join(lines)
    kinds = [
        kind
        for line in lines
        for kind in (
            "WorkflowStarted",
            "SignalReceived",
            "ActivityScheduled",
            "ActivitySucceeded",
            "EventsPublished",
            "WorkflowSucceeded",
        )
        if f" {kind} " in f" {line} "
    ]
    assert kinds == [
        "WorkflowStarted",
        "SignalReceived",
        "ActivityScheduled",
        "ActivitySucceeded",
        "EventsPublished",
        "WorkflowSucceeded",
    ]
    assert f"{order} approved by carol" in text
    assert "SUCCEEDED" in text


def test_start_follow_json_prints_json_lines(server: Server) -> None:
    proc = server.cli("start", "echo", '{"k": "v"}', "--follow", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["already_running"] is False
    id = lines[0]["execution_id"]
    events = lines[1:-1]
    assert [event["type"] for event in events] == ["WorkflowStarted", "WorkflowSucceeded"]
    assert events[-1]["result"] == {"k": "v"}
    assert lines[-1]["execution"]["id"] == id
    assert lines[-1]["execution"]["status"] == "SUCCEEDED"
    assert lines[-1]["execution"]["result"] == {"k": "v"}


def test_start_follow_exits_1_when_the_execution_does_not_succeed(server: Server) -> None:
    order = unique("fc")
    process, reader = follow(server, "approve", json.dumps(order), "--name", order, "--json")
    try:
        reader.wait_for("WorkflowStarted")
        server.ok("cancel", f"approve/{order}")
        lines = [json.loads(line) for line in reader.rest()]
        assert process.wait(30) == 1
    finally:
        if process.poll() is None:
            process.kill()
    assert lines[-2]["type"] == "WorkflowCancelled"
    assert lines[-1]["execution"]["status"] == "CANCELLED"


# -- executions ---------------------------------------------------------------------------------------


def test_executions_filters_by_workflow_and_status(server: Server) -> None:
    waiting = unique("w")
    server.ok("start", "approve", json.dumps(waiting), "--name", waiting)
    done = approved(server, unique("d"))
    shipped = f"ship/order-{done.split('/', 1)[1]}"
    server.wait_status(shipped, "SUCCEEDED")

    every = [item["id"] for item in server.json("executions", "--max-results", "1000")["executions"]]
    assert {f"approve/{waiting}", done, shipped} <= set(every)

    approves = server.json("executions", "--workflow", "approve", "--max-results", "1000")["executions"]
    assert {item["workflow"] for item in approves} == {"approve"}
    assert {f"approve/{waiting}", done} <= {item["id"] for item in approves}

    running = server.json("executions", "--workflow", "approve", "--status", "in_progress", "--max-results", "1000")
    ids = {item["id"] for item in running["executions"]}
    assert f"approve/{waiting}" in ids
    assert done not in ids
    assert {item["status"] for item in running["executions"]} == {"IN_PROGRESS"}

    either = server.json(
        "executions",
        "--workflow",
        "approve",
        "--status",
        "SUCCEEDED",
        "--status",
        "IN_PROGRESS",
        "--max-results",
        "1000",
    )
    assert {f"approve/{waiting}", done} <= {item["id"] for item in either["executions"]}

    table = server.ok("executions", "--workflow", "approve", "--status", "SUCCEEDED", "--max-results", "1000").stdout
    assert done in table
    assert f"approve/{waiting}" not in table
    for column in ("id", "workflow", "status", "start", "end"):
        assert column in table


def test_executions_pages_with_next_token_and_sorts(server: Server) -> None:
    for _ in range(3):
        server.json("start", "echo", '"page"')
    everything = [
        item["id"] for item in server.json("executions", "--workflow", "echo", "--max-results", "1000")["executions"]
    ]
    assert len(everything) >= 3

    paged: list[str] = []
    token: str | None = None
    while True:
        args = ["executions", "--workflow", "echo", "--max-results", "2"]
        if token is not None:
            args += ["--next-token", token]
        page = server.json(*args)
        assert len(page["executions"]) <= 2
        paged += [item["id"] for item in page["executions"]]
        token = page["next_token"]
        if token is None:
            break
    assert paged == everything

    newest_first = server.json("executions", "--workflow", "echo", "--max-results", "1000", "--desc")["executions"]
    assert [item["id"] for item in newest_first] == everything[::-1]

    first_page = server.ok("executions", "--workflow", "echo", "--max-results", "1").stdout
    assert "--next-token" in first_page  # the table tells how to get the next page


def test_executions_rejects_bad_options(server: Server) -> None:
    proc = server.cli("executions", "--status", "RUNNING")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
    proc = server.cli("executions", "--max-results", "0")
    assert proc.returncode == 2
    assert "--max-results" in proc.stderr
    proc = server.cli("executions", "--next-token", "garbage!", "--json")
    assert proc.returncode == 1
    body = json.loads(proc.stdout)
    assert body["error"] == "InvalidPageToken", body
    assert "invalid next_token 'garbage!'" in body["message"], body


# -- history, logs, execution -------------------------------------------------------------------------


def test_history_shows_every_recorded_event(server: Server) -> None:
    id = approved(server, unique("h"), approver="dave")
    events = server.json("history", id)
    assert [event["type"] for event in events] == [
        "WorkflowStarted",
        "SignalReceived",
        "ActivityScheduled",
        "ActivitySucceeded",
        "EventsPublished",
        "WorkflowSucceeded",
    ]
    assert events[1]["payload"] == "dave"
    assert events[2]["name"] == "notify"
    order = id.split("/", 1)[1]
    assert events[-1]["result"] == f"{order} approved by dave"

    table = server.ok("history", id).stdout
    for column in ("seq", "type", "time", "details"):
        assert column in table
    for event in events:
        assert event["type"] in table
    assert "name=notify" in table
    assert "signal=approval" in table


def test_logs_show_workflow_and_activity_output(server: Server) -> None:
    id = approved(server, unique("l"), approver="erin")
    order = id.split("/", 1)[1]
    logs = server.json("logs", id)
    assert {"source": "workflow", "message": f"waiting for approval of {order}"} in [
        {"source": entry["source"], "message": entry["message"]} for entry in logs
    ]
    assert {"source": "notify", "message": f"notifying erin about {order}"} in [
        {"source": entry["source"], "message": entry["message"]} for entry in logs
    ]
    table = server.ok("logs", id).stdout
    assert f"waiting for approval of {order}" in table
    assert "notify" in table


def test_logs_of_an_execution_without_logs_says_so(server: Server) -> None:
    id = f"echo/{unique('quiet')}"
    server.ok("start", "echo", "1", "--name", id.split("/", 1)[1])
    server.wait_status(id, "SUCCEEDED")
    assert server.json("logs", id) == []
    assert server.ok("logs", id).stdout.startswith(f"no logs for {id}")


def test_table_titles_keep_execution_ids_whole(server: Server) -> None:
    """On a terminal narrower than a title, the title is still one line: rich does not wrap it to the
    table's width, which would cut the execution id in two."""
    id = approved(server, unique("a-rather-long-order-name-for-a-narrow-terminal"))
    for verb in ("history", "logs"):
        proc = server.cli(verb, id, env=_env(COLUMNS="60"))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0] == f"{verb} of {id}"


def test_execution_panel_shows_the_result(server: Server) -> None:
    id = approved(server, unique("e"), approver="fay")
    shown = server.ok("execution", id).stdout
    order = id.split("/", 1)[1]
    assert "SUCCEEDED" in shown
    assert f"{order} approved by fay" in shown
    assert server.json("execution", id)["result"] == f"{order} approved by fay"


# -- timeline -----------------------------------------------------------------------------------------


def test_timeline_draws_what_a_running_execution_waits_on(server: Server) -> None:
    """`approve` waits on `approval.expect()` (no timeout): history does not record that wait; the server's
    waits route does, and the terminal picture and its JSON say so."""
    order = unique("t")
    id = f"approve/{order}"
    server.ok("start", "approve", json.dumps(order), "--name", order)
    shown = server.cli("timeline", id, env=_env(COLUMNS="120"))
    assert shown.returncode == 0, shown.stderr
    drawn = shown.stdout
    assert drawn.splitlines()[0].startswith(f"{id}  IN_PROGRESS")
    assert "waiting: signal approval" in drawn
    assert "workflow" in drawn
    assert "signal approval" in drawn
    assert "▒" in drawn
    model = server.json("timeline", id)
    assert model["status"] == "IN_PROGRESS"
    assert model["waiting"] == ["signal approval"]
    assert [(span["kind"], span["label"], span["outcome"]) for span in model["spans"]] == [
        ("workflow", "workflow approve", "running"),
        ("signal", "expect approval", "waiting"),
    ]
    server.ok("signal", id, "approval", "hal")
    server.wait_status(id, "SUCCEEDED")
    done = server.json("timeline", id)
    assert done["waiting"] == []
    assert done["now"] is None
    notify = next(span for span in done["spans"] if span["kind"] == "activity")
    assert notify["details"]["result"] == f"{order} approved by hal"
    drawn = server.ok("timeline", id).stdout
    assert "notify: succeeded" in drawn
    assert "waiting:" not in drawn


def test_timeline_html_writes_one_self_contained_page(server: Server, tmp_path: Path) -> None:
    id = approved(server, unique("th"), approver="ivy")
    page = tmp_path / "report" / "timeline.html"
    page.parent.mkdir()
    said = server.ok("timeline", id, "--html", str(page)).stdout
    assert said.strip() == f"wrote the timeline of {id} (6 events) to {page}"
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "<svg" in text
    assert "<script" not in text
    assert "http://" not in text
    assert "https://" not in text
    assert 'data-label="notify"' in text
    assert "ActivitySucceeded" in text
    assert "notifying ivy" in text
    assert server.json("timeline", id, "--html", str(page)) == {"execution_id": id, "html": str(page), "events": 6}


def test_timeline_errors_say_what_was_wrong(server: Server, tmp_path: Path) -> None:
    missing = server.cli("timeline", "approve/no-such-order")
    assert missing.returncode == 1
    assert "ExecutionNotFound" in missing.stderr
    assert "approve/no-such-order" in missing.stderr
    id = approved(server, unique("te"))
    nowhere = tmp_path / "no-such-dir" / "t.html"
    unwritable = server.cli("timeline", id, "--html", str(nowhere))
    assert unwritable.returncode == 1, unwritable.stderr
    assert f"cannot write the timeline of {id} to {nowhere}" in unwritable.stderr
    assert "Traceback" not in unwritable.stderr + missing.stderr
    usage = server.cli("timeline")
    assert usage.returncode == 2
    assert "ID" in usage.stderr


# -- signal, publish, cancel --------------------------------------------------------------------------


def test_signal_with_id_and_json_payload(server: Server) -> None:
    order = unique("s")
    id = f"approve/{order}"
    server.ok("start", "approve", json.dumps(order), "--name", order)
    body = server.json("signal", id, "approval", '"gus"', "--id", "sig-1")
    assert body == {"execution_id": id, "signal": "approval", "payload": "gus", "id": "sig-1"}
    server.wait_status(id, "SUCCEEDED")
    received = [event for event in server.json("history", id) if event["type"] == "SignalReceived"]
    assert [(event["payload"], event["id"]) for event in received] == [("gus", "sig-1")]


def test_signal_to_an_ended_execution_is_an_error(server: Server) -> None:
    id = approved(server, unique("se"))
    proc = server.cli("signal", id, "approval", "again")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ")
    assert id in proc.stderr
    assert "Traceback" not in proc.stderr


def test_publish_reaches_subscriptions(server: Server) -> None:
    order = unique("p")
    proc = server.ok("publish", "OrderApproved", json.dumps({"order_id": order}))
    assert "published OrderApproved" in proc.stdout
    # the subscription starts ship/order-<id>: the event was delivered with its fields
    assert server.wait_status(f"ship/order-{order}", "SUCCEEDED")["result"] == f"shipped {order}"

    other = unique("pj")
    body = server.json("publish", "OrderApproved", json.dumps({"order_id": other}))
    assert body == {"published": {"name": "OrderApproved", "event": {"order_id": other}}}
    server.wait_status(f"ship/order-{other}", "SUCCEEDED")


def test_publish_rejects_bad_payloads(server: Server) -> None:
    proc = server.cli("publish", "OrderApproved", "[1, 2]")
    assert proc.returncode == 2
    assert "JSON object" in proc.stderr
    # fields that do not match the event's model: the server names the field
    proc = server.cli("publish", "OrderApproved", '{"id": "x"}', "--json")
    assert proc.returncode == 1
    assert "order_id" in proc.stderr
    assert json.loads(proc.stdout)["error"] == "InputValidationError"


def test_cancel_ends_an_execution(server: Server) -> None:
    order = unique("c")
    id = f"approve/{order}"
    server.ok("start", "approve", json.dumps(order), "--name", order)
    assert server.ok("cancel", id).stdout.strip() == f"cancel requested for {id}"
    server.wait_status(id, "CANCELLED")
    assert server.json("history", id)[-1]["type"] == "WorkflowCancelled"
    again = server.cli("cancel", id, "--json")
    assert again.returncode == 1
    assert "error: " in again.stderr
    assert id in json.loads(again.stdout)["message"]

    other = unique("cj")
    server.ok("start", "approve", json.dumps(other), "--name", other)
    assert server.json("cancel", f"approve/{other}") == {"execution_id": f"approve/{other}", "cancel_requested": True}
    server.wait_status(f"approve/{other}", "CANCELLED")


# -- replay -------------------------------------------------------------------------------------------


def test_replay_matches_the_code_that_recorded_it(server: Server) -> None:
    id = approved(server, unique("r"))
    proc = server.ok("replay", id, "--target", str(FIXTURE))
    assert proc.stdout.strip() == f"replay of {id} matches the current code (6 events)"
    body = server.json("replay", id, "--target", str(FIXTURE))
    assert body["matches"] is True
    assert body["events"] == 6
    assert body["next_commands"] == []


def test_replay_of_an_execution_in_progress(server: Server) -> None:
    order = unique("ri")
    server.ok("start", "approve", json.dumps(order), "--name", order)
    body = server.json("replay", f"approve/{order}", "--target", str(FIXTURE))
    assert body == {"execution_id": f"approve/{order}", "matches": True, "events": 1, "next_commands": []}
    # the changed code only differs after the signal: what was recorded so far still matches
    assert server.json("replay", f"approve/{order}", "--target", str(CHANGED))["matches"] is True


def test_replay_reports_a_divergence(server: Server) -> None:
    id = approved(server, unique("rd"))
    proc = server.cli("replay", id, "--target", str(CHANGED))
    assert proc.returncode == 1
    assert f"replay of {id} diverges from the current code" in proc.stderr
    assert "'notify'" in proc.stderr
    assert "'notify_v2'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = server.cli("replay", id, "--target", str(CHANGED), "--json")
    assert proc.returncode == 1
    body = json.loads(proc.stdout)
    assert body["matches"] is False
    assert body["error"] == "DeterminismError"
    assert body["execution_id"] == id
    assert "notify_v2" in body["message"]


def test_replay_reports_code_that_does_more_after_the_recorded_end(server: Server, tmp_path: Path) -> None:
    """An ended execution whose code would now issue more commands no longer matches what it recorded."""
    id = server.json("start", "echo", '"e"')["execution_id"]
    server.wait_status(id, "SUCCEEDED")
    longer = tmp_path / "longer.py"
    longer.write_text(
        "import eventual_nb as ev\n"
        "ev.Service('cli-service')\n"
        "@ev.activity\n"
        "def extra(value: str) -> str:\n"
        "    return value\n"
        "@ev.workflow\n"
        "async def echo(value: str) -> str:\n"
        "    return await extra(value)\n"
    )
    proc = server.cli("replay", id, "--target", str(longer))
    assert proc.returncode == 1
    assert "ScheduleActivity" in proc.stderr


def test_replay_target_problems(server: Server, tmp_path: Path) -> None:
    id = approved(server, unique("rt"))
    missing = server.cli("replay", id, "--target", str(tmp_path / "nope.py"))
    assert missing.returncode == 1
    assert "error: TargetError: file not found" in missing.stderr

    other = tmp_path / "other.py"
    other.write_text(
        "import eventual_nb as ev\nev.Service('other')\n@ev.workflow\nasync def unrelated() -> None:\n    pass\n"
    )
    proc = server.cli("replay", id, "--target", str(other))
    assert proc.returncode == 1
    assert "error: WorkflowNotFound:" in proc.stderr
    assert "unrelated" in proc.stderr  # says what the target does define

    notebook = tmp_path / "nb.ipynb"
    notebook.write_text("{}")
    proc = server.cli("replay", id, "--target", str(notebook))
    assert proc.returncode == 1
    assert "error: TargetError: cannot load" in proc.stderr
    assert "nb.ipynb is not a notebook" in proc.stderr

    unknown = server.cli("replay", "approve/never-started", "--target", str(FIXTURE))
    assert unknown.returncode == 1
    assert "error: ExecutionNotFound:" in unknown.stderr

    usage = server.cli("replay", id)
    assert usage.returncode == 2
    assert "--target" in usage.stderr


# -- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["execution", "approve/no-such-execution"],
        ["history", "approve/no-such-execution"],
        ["logs", "approve/no-such-execution"],
        ["cancel", "approve/no-such-execution"],
        ["signal", "approve/no-such-execution", "approval", "x"],
    ],
    ids=lambda argv: argv[0],
)
def test_unknown_execution_is_execution_not_found(server: Server, argv: list[str]) -> None:
    proc = server.cli(*argv)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ExecutionNotFound: ")
    assert "approve/no-such-execution" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    proc = server.cli(*argv, "--json")
    assert proc.returncode == 1
    body = json.loads(proc.stdout)
    assert body["error"] == "ExecutionNotFound"
    assert body["execution_id"] == "approve/no-such-execution"


@pytest.mark.parametrize(
    "argv",
    [
        ["workflows"],
        ["start", "echo", "1", "--follow"],
        ["executions"],
        ["execution", "a/b"],
        ["history", "a/b"],
        ["logs", "a/b"],
        ["signal", "a/b", "s"],
        ["publish", "E"],
        ["cancel", "a/b"],
        ["replay", "a/b", "--target", str(FIXTURE)],
    ],
    ids=lambda argv: argv[0],
)
def test_server_down_names_the_url(argv: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = run_cli(*argv, "--url", url)
    assert proc.returncode == 1
    assert url in proc.stderr
    assert "eventual-nb serve" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli(*argv, "--url", url, "--json")
    assert proc.returncode == 1
    assert url in json.loads(proc.stdout)["message"]


def test_url_defaults_to_eventual_url(server: Server) -> None:
    proc = run_cli("workflows", "--json", env=_env(EVENTUAL_URL=server.url))
    assert proc.returncode == 0, proc.stderr
    assert "approve" in {item["name"] for item in json.loads(proc.stdout)}
    # without --url or EVENTUAL_URL the CLI talks to the default local server's address
    proc = run_cli("workflows", env=_env(EVENTUAL_URL=""))
    if proc.returncode != 0:
        assert "http://127.0.0.1:3111" in proc.stderr


# -- serve --------------------------------------------------------------------------------------------


def test_serve_keeps_state_across_restarts(tmp_path: Path) -> None:
    """A real `eventual-nb serve` process: it says what it serves, and an execution waiting for a signal
    survives a stop and restart on the same database, then completes when signalled."""
    db = tmp_path / "state.db"
    first = start_server(FIXTURE, db)
    try:
        first.ok("start", "approve", '"kept"', "--name", "kept")
        # a second server on the same database refuses to start, naming the process that holds it
        clash = run_cli("serve", str(FIXTURE), "--port", str(free_port()), "--db", str(db))
        assert clash.returncode == 1
        assert clash.stderr.startswith("error: DatabaseLocked: ")
        assert f"process {first.process.pid}" in clash.stderr
        assert "Traceback" not in clash.stderr
    finally:
        log = first.stop()
    assert f"serving cli-service on {first.url} (db {db}, event bus {tmp_path / 'bus.db'})" in log
    assert db.exists()

    second = start_server(FIXTURE, db)
    try:
        assert second.json("execution", "approve/kept")["status"] == "IN_PROGRESS"
        second.ok("signal", "approve/kept", "approval", "hal")
        assert second.wait_status("approve/kept", "SUCCEEDED")["result"] == "kept approved by hal"
        assert second.ok("replay", "approve/kept", "--target", str(FIXTURE)).returncode == 0
    finally:
        second.stop()


def test_serve_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    proc = run_cli("serve", str(FIXTURE), "--host", "0.0.0.0", "--port", str(free_port()), "--db", str(tmp_path / "x"))
    assert proc.returncode == 2
    assert "EVENTUAL_TOKEN" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_serve_with_token_demands_it_and_defaults_the_db_path(tmp_path: Path) -> None:
    """With EVENTUAL_TOKEN set, serve may listen beyond loopback and the internal routes need the token;
    without --db the database is .eventual/<service>.db in the working directory."""
    token = uuid.uuid4().hex
    server = start_server(FIXTURE, None, host="0.0.0.0", cwd=tmp_path, env=_env(EVENTUAL_TOKEN=token))
    try:
        refused = server.cli("workflows", cwd=tmp_path)
        assert refused.returncode == 1
        assert "error: Unauthorized:" in refused.stderr
        wrong = server.cli("workflows", "--token", "wrong", cwd=tmp_path)
        assert wrong.returncode == 1
        assert "Unauthorized" in wrong.stderr
        assert server.cli("workflows", "--token", token, cwd=tmp_path).returncode == 0
        with_env = server.cli("workflows", "--json", cwd=tmp_path, env=_env(EVENTUAL_TOKEN=token))
        assert with_env.returncode == 0, with_env.stderr
        assert "echo" in {item["name"] for item in json.loads(with_env.stdout)}
        assert (tmp_path / ".eventual" / "cli-service.db").exists()
    finally:
        server.stop()


def test_serve_target_problems(tmp_path: Path) -> None:
    port = str(free_port())
    proc = run_cli("serve", str(tmp_path / "missing.py"), "--port", port, "--db", str(tmp_path / "db"))
    assert proc.returncode == 1
    assert "error: TargetError: file not found" in proc.stderr
    assert "Traceback" not in proc.stderr

    broken = tmp_path / "broken.py"
    broken.write_text("import eventual_nb as ev\n\nev.Service('broken')\nraise RuntimeError('boom at import')\n")
    proc = run_cli("serve", str(broken), "--port", port, "--db", str(tmp_path / "db"))
    assert proc.returncode == 1
    assert "RuntimeError: boom at import" in proc.stderr
    assert f'File "{broken}", line 4' in proc.stderr

    notebook = tmp_path / "service.ipynb"
    notebook.write_text("{}")
    proc = run_cli("serve", str(notebook), "--port", port, "--db", str(tmp_path / "db"), "--json")
    assert proc.returncode == 1
    assert "service.ipynb is not a notebook" in proc.stderr
    assert json.loads(proc.stdout)["error"] == "TargetError"


# -- load_target --------------------------------------------------------------------------------------


@pytest.fixture
def clean_import_state() -> Iterator[None]:
    path = list(sys.path)
    modules = set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def _service_file(path: Path, service: str, workflow: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "import eventual_nb as ev\n"
        f"SERVICE = ev.Service({service!r})\n"
        "@ev.workflow\n"
        f"async def {workflow}(x: int) -> int:\n"
        "    return x\n"
    )
    return path


@pytest.mark.usefixtures("clean_import_state")
def test_load_target_file_returns_only_the_services_it_defined(tmp_path: Path) -> None:
    name = unique("loader-file")
    target = _service_file(tmp_path / "svc.py", name, "lf_flow")
    services = load_target(str(target))
    assert [service.name for service in services] == [name]
    assert "lf_flow" in services[0].workflows
    # loading again replaces the definitions: still that service, and not the ones it did not touch
    assert [service.name for service in load_target(str(target))] == [name]


@pytest.mark.usefixtures("clean_import_state")
def test_load_target_module_name_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = unique("loader-module")
    module = f"mod_{uuid.uuid4().hex[:8]}"
    _service_file(tmp_path / f"{module}.py", name, "lm_flow")
    monkeypatch.chdir(tmp_path)
    services = load_target(module)
    assert [service.name for service in services] == [name]


@pytest.mark.usefixtures("clean_import_state")
def test_load_target_exported_package_directory(tmp_path: Path) -> None:
    """An exported package: eventual.json names the package, even when the directory holds others."""
    name = unique("loader-export")
    package = f"pkg_{uuid.uuid4().hex[:8]}"
    _service_file(tmp_path / package / "__init__.py", name, "le_flow")
    _service_file(tmp_path / "decoy" / "__init__.py", unique("decoy"), "decoy_flow")
    (tmp_path / "eventual.json").write_text(json.dumps({"name": name, "package": package}))
    assert [service.name for service in load_target(str(tmp_path))] == [name]


@pytest.mark.usefixtures("clean_import_state")
def test_load_target_directory_with_one_package_or_a_package_itself(tmp_path: Path) -> None:
    one = unique("loader-one")
    package = f"pkg_{uuid.uuid4().hex[:8]}"
    _service_file(tmp_path / "holder" / package / "__init__.py", one, "lo_flow")
    (tmp_path / "holder" / "notes").mkdir()  # not a package
    assert [service.name for service in load_target(str(tmp_path / "holder"))] == [one]

    itself = unique("loader-itself")
    other = f"pkg_{uuid.uuid4().hex[:8]}"
    _service_file(tmp_path / other / "__init__.py", itself, "li_flow")
    assert [service.name for service in load_target(str(tmp_path / other))] == [itself]


@pytest.mark.usefixtures("clean_import_state")
def test_load_target_directory_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TargetError, match="no Python package"):
        load_target(str(empty))
    several = tmp_path / "several"
    _service_file(several / "alpha" / "__init__.py", unique("a"), "a_flow")
    _service_file(several / "beta" / "__init__.py", unique("b"), "b_flow")
    with pytest.raises(TargetError, match="alpha, beta"):
        load_target(str(several))
    bad_manifest = tmp_path / "bad"
    bad_manifest.mkdir()
    (bad_manifest / "eventual.json").write_text('{"name": "x"}')
    with pytest.raises(TargetError, match=r"eventual\.json"):
        load_target(str(bad_manifest))


@pytest.mark.usefixtures("clean_import_state")
def test_load_target_import_errors_name_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="file not found"):
        load_target(str(tmp_path / "missing.py"))
    with pytest.raises(TargetError, match="no importable module"):
        load_target(f"no_such_module_{uuid.uuid4().hex[:8]}")

    syntax = tmp_path / "syntax.py"
    syntax.write_text("import eventual_nb as ev\n\ndef broken(:\n    pass\n")
    with pytest.raises(TargetError) as caught:
        load_target(str(syntax))
    assert "SyntaxError" in caught.value.message
    assert f'File "{syntax}", line 3' in caught.value.message

    failing = tmp_path / "failing.py"
    failing.write_text("import eventual_nb as ev\n\n\ndef helper():\n    return 1 / 0\n\n\nhelper()\n")
    with pytest.raises(TargetError) as caught:
        load_target(str(failing))
    assert "ZeroDivisionError" in caught.value.message
    assert f'File "{failing}", line 5, in helper' in caught.value.message

    missing_dependency = tmp_path / "needs.py"
    missing_dependency.write_text(f"import os\nimport not_installed_{uuid.uuid4().hex[:6]}\n")
    with pytest.raises(TargetError) as caught:
        load_target(str(missing_dependency))
    assert "ModuleNotFoundError" in caught.value.message
    assert f'File "{missing_dependency}", line 2' in caught.value.message


def test_load_target_notebook_that_is_not_one(tmp_path: Path) -> None:
    """Serving notebooks is tested with the exporter (tests/test_exporter.py); here: a broken file."""
    notebook = tmp_path / "service.ipynb"
    notebook.write_text("{}")
    with pytest.raises(TargetError, match=r"service\.ipynb is not a notebook"):
        load_target(str(notebook))
    with pytest.raises(TargetError, match="notebook not found"):
        load_target(str(tmp_path / "missing.ipynb"))
