"""The ``eventual-nb`` command line (also ``python -m eventual_nb.cli`` and ``python -m eventual_nb``).

Every verb is declared in ``build_parser``, so ``--help``, scripts and tests see the whole command line.

Exit statuses: 0 success; 1 the operation failed (an error from the service, an unreachable server, a
port in use, a target that defines nothing, a replay that diverged, a followed execution that did not
succeed); 2 a usage error (argparse's, a malformed ``--url``, a port outside 0-65535, a file that is
not a notebook). Never a traceback: a failure the verb foresaw is one line. Errors go to stderr as ``error: <Type>: <message>``; with ``--json`` the same error is also
printed to stdout as ``{"error": <Type>, "message": ..., ...}``, the HTTP API's error shape.

This module imports only the standard library at module level: ``eventual-nb --help`` must stay
fast and must work on a core install. Verbs import what they need (rich, httpx, the runtimes,
``kernel_ext``, ``exporter``) inside their handlers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console

PROG = "eventual-nb"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3111
STATUSES = ("IN_PROGRESS", "SUCCEEDED", "FAILED", "CANCELLED")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
#: environment variables the service-client verbs and ``serve`` read
URL_ENV = "EVENTUAL_URL"
TOKEN_ENV = "EVENTUAL_TOKEN"
#: seconds between two history polls of ``start --follow``
FOLLOW_POLL_SECONDS = 0.2

#: Exit status of an operation that failed (service error, unreachable server, divergent replay).
EXIT_FAILED = 1
EXIT_OK = 0
#: Exit status of a command line that does not make sense (as argparse's own usage errors).
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


def cmd_kernel_install(args: argparse.Namespace) -> int:
    """Install the "Eventual (Python 3)" kernelspec (named `eventual`; never touches `python3`)."""
    out = Output(args.json)
    try:
        from kernel_ext.kernelspec import DISPLAY_NAME, KERNEL_NAME, install_kernelspec
    except ImportError as exc:
        message = f"{PROG} kernel install needs the notebook extra: pip install 'eventual-nb[notebook]' ({exc})"
        print(message, file=sys.stderr)
        if args.json:
            out.json({"error": "MissingDependency", "message": message})
        return EXIT_FAILED
    if sum(bool(x) for x in (args.user, args.prefix, args.sys_prefix)) > 1:
        message = f"{PROG} kernel install: choose one of --user, --prefix, --sys-prefix"
        print(message, file=sys.stderr)
        if args.json:
            out.json({"error": "UsageError", "message": message})
        return EXIT_USAGE
    prefix = sys.prefix if args.sys_prefix else args.prefix
    path = install_kernelspec(user=args.user, prefix=prefix)
    if args.json:
        out.json({"kernel": KERNEL_NAME, "display_name": DISPLAY_NAME, "path": str(path)})
    else:
        print(f"installed kernelspec '{KERNEL_NAME}' ({DISPLAY_NAME}) in {path}")
    return EXIT_OK


# -- output -----------------------------------------------------------------------------------------


class Output:
    """Where a verb's results go: rich tables and panels for people, JSON with ``--json`` for scripts."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            # Piped output is not cut to 80 columns: ids and payloads must stay whole for grep and scripts.
            wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
            self._console = Console(highlight=False, markup=False, soft_wrap=False, width=200 if wide else None)
        return self._console

    def json(self, value: Any, *, compact: bool = False) -> None:
        text = json.dumps(to_jsonable(value), indent=None if compact else 2, ensure_ascii=False)
        print(text, flush=True)

    def table(self, title: str | None, columns: list[str], rows: list[list[Any]], caption: str | None = None) -> None:
        """A table, its title above and caption below as lines of their own that rich never wraps (the
        terminal does, if it must): they hold execution ids and tokens, which a table-width wrap would
        cut in the middle."""
        from rich.table import Table
        from rich.text import Text

        table = Table(show_lines=False)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(Text(_cell(value)) for value in row))
        if title:
            self.console.print(Text(title, style="table.title"), soft_wrap=True)
        self.console.print(table)
        if caption:
            self.console.print(Text(caption, style="table.caption"), soft_wrap=True)

    def panel(self, title: str, fields: list[tuple[str, Any]]) -> None:
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        for key, value in fields:
            grid.add_row(Text(key), Text(_cell(value)))
        self.console.print(Panel(grid, title=Text(title), title_align="left", expand=False))

    def line(self, text: str) -> None:
        from rich.text import Text

        self.console.print(Text(text))

    def error(self, kind: str, message: str, body: dict[str, Any] | None = None) -> int:
        print(f"error: {kind}: {message}", file=sys.stderr, flush=True)
        if self.as_json:
            self.json(body if body is not None else {"error": kind, "message": message})
        return EXIT_FAILED


def to_jsonable(value: Any) -> Any:
    """pydantic models as ``model_dump(mode="json")``, recursively through lists, tuples and dicts."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _cell(value: Any) -> str:
    """One table cell: times as ISO-8601 to the millisecond, structured values as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat) and hasattr(value, "hour"):
        return str(isoformat(timespec="milliseconds"))
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return json.dumps(to_jsonable(value), ensure_ascii=False, separators=(", ", ": "))


def _history_row(event: Any) -> list[Any]:
    from eventual_nb.engine.history import describe_event

    return [
        getattr(event, "seq", None),
        getattr(event, "type", type(event).__name__),
        event.timestamp,
        describe_event(event),
    ]


def _execution_fields(execution: Any) -> list[tuple[str, Any]]:
    fields: list[tuple[str, Any]] = [
        ("id", execution.id),
        ("workflow", execution.workflow),
        ("status", str(execution.status)),
        ("start", execution.start_time),
        ("end", execution.end_time),
        ("input", _cell(execution.input)),
    ]
    if execution.result is not None:
        fields.append(("result", _cell(execution.result)))
    if execution.error is not None:
        fields.append(("error", execution.error))
    if execution.message:
        fields.append(("message", execution.message))
    if execution.parent is not None:
        fields.append(("parent", execution.parent))
    return fields


def _parse_json_or_string(text: str | None) -> Any:
    """A command-line value as JSON, else the plain string (``start wf alice`` sends ``"alice"``), like Eventual."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


# -- service-client verbs ----------------------------------------------------------------------------

ClientVerb = Callable[[Any, argparse.Namespace, Output], Awaitable[int]]


def client_url(args: argparse.Namespace) -> str:
    from eventual_nb.client import DEFAULT_URL

    return str(getattr(args, "url", None) or os.environ.get(URL_ENV) or DEFAULT_URL)


def client_token(args: argparse.Namespace) -> str | None:
    return getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None


def client_verb(run: ClientVerb) -> Handler:
    """Wrap a verb that talks to a service: make the client, report its errors, exit with a status."""

    def handler(args: argparse.Namespace) -> int:
        import asyncio

        try:
            return asyncio.run(_run_client(run, args))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return handler


async def _run_client(run: ClientVerb, args: argparse.Namespace) -> int:
    import httpx

    from eventual_nb import errors
    from eventual_nb.client import InvalidURL, ServiceClient

    out = Output(bool(getattr(args, "json", False)))
    url = client_url(args)
    try:
        client = ServiceClient(url, token=client_token(args))
    except InvalidURL as exc:
        source = "--url" if getattr(args, "url", None) else f"${URL_ENV}"
        return _client_usage_error(args, out, f"{source}: {exc}")
    try:
        return await run(client, args, out)
    except UsageError as exc:
        return _client_usage_error(args, out, str(exc))
    except errors.EventualError as exc:
        return out.error(type(exc).__name__, exc.message or str(exc), exc.to_json())
    except (httpx.TransportError, ConnectionError) as exc:
        reason = str(exc) or type(exc).__name__
        message = (
            f"cannot reach the service at {url} ({reason}); is a server running there? "
            f"Start one with `{PROG} serve TARGET`, or pass --url (or set {URL_ENV})"
        )
        return out.error("ConnectionError", message)
    finally:
        close = getattr(client, "aclose", None)
        if callable(close):
            await close()


def _client_usage_error(args: argparse.Namespace, out: Output, message: str) -> int:
    print(f"{PROG} {args.verb}: error: {message}", file=sys.stderr)
    if out.as_json:
        out.json({"error": "UsageError", "message": message})
    return EXIT_USAGE


class UsageError(Exception):
    """A verb's argument that argparse could not check (bad JSON shape, bad duration): exit 2."""


async def _workflows(client: Any, args: argparse.Namespace, out: Output) -> int:
    workflows = await client.list_workflows()
    if out.as_json:
        out.json(workflows)
        return 0
    rows = [
        [
            workflow.name,
            getattr(workflow, "service", None),
            None if getattr(workflow, "timeout_seconds", None) is None else f"{workflow.timeout_seconds:g}s",
        ]
        for workflow in workflows
    ]
    out.table(f"workflows at {client_url(args)}", ["name", "service", "timeout"], rows)
    return 0


async def _start(client: Any, args: argparse.Namespace, out: Output) -> int:
    timeout: float | None = None
    if args.timeout is not None:
        from eventual_nb.durations import InvalidDuration, parse_duration

        try:
            timeout = parse_duration(_parse_json_or_string(args.timeout), what="--timeout").total_seconds()
        except InvalidDuration as exc:
            raise UsageError(str(exc)) from None
    handle = await client.start_execution(
        args.workflow, _parse_json_or_string(args.input), name=args.name, timeout=timeout
    )
    already = bool(getattr(handle, "already_running", False))
    if args.follow:
        return await _follow(client, handle.id, already, out)
    if out.as_json:
        out.json({"execution_id": handle.id, "already_running": already})
    elif already:
        out.line(f"{handle.id} already exists with this input (start is idempotent with --name); not started again")
    else:
        out.line(f"started {handle.id}")
    return 0


async def _follow(client: Any, execution_id: str, already: bool, out: Output) -> int:
    """Print each new history event as it is recorded, then the execution once it has ended.

    With ``--json`` the output is JSON lines: one per history event, then a last line holding the
    execution. The exit status is 0 if the execution succeeded, 1 otherwise.
    """
    import asyncio
    import contextlib

    if out.as_json:
        out.json({"execution_id": execution_id, "already_running": already}, compact=True)
    else:
        out.line(f"{'following existing' if already else 'started'} {execution_id}")
    status: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if not out.as_json and out.console.is_terminal:
        status = out.console.status(f"waiting for {execution_id}…")
    shown = 0
    with status:
        while True:
            history = await client.get_execution_history(execution_id)
            for event in history[shown:]:
                if out.as_json:
                    out.json(event, compact=True)
                else:
                    seq, kind, time, details = _history_row(event)
                    out.line(f"{_cell(seq):>4}  {_cell(time)}  {kind:<26} {details}".rstrip())
            shown = len(history)
            if history and history[-1].type in ("WorkflowSucceeded", "WorkflowFailed", "WorkflowCancelled"):
                execution = await client.get_execution(execution_id)
                if str(execution.status) != "IN_PROGRESS":
                    break
            await asyncio.sleep(FOLLOW_POLL_SECONDS)
    if out.as_json:
        out.json({"execution": to_jsonable(execution)}, compact=True)
    else:
        out.panel(f"{execution.id} {execution.status}", _execution_fields(execution))
    return 0 if str(execution.status) == "SUCCEEDED" else EXIT_FAILED


async def _executions(client: Any, args: argparse.Namespace, out: Output) -> int:
    if args.max_results < 1:
        raise UsageError(f"--max-results must be at least 1, got {args.max_results}")
    page = await client.list_executions(
        workflow=args.workflow,
        statuses=args.status or None,
        next_token=args.next_token,
        max_results=args.max_results,
        sort="desc" if args.desc else "asc",
    )
    if out.as_json:
        out.json(page)
        return 0
    rows = [
        [execution.id, execution.workflow, str(execution.status), execution.start_time, execution.end_time]
        for execution in page.executions
    ]
    caption = f"more: --next-token {page.next_token}" if page.next_token else None
    out.table(f"{len(rows)} execution(s)", ["id", "workflow", "status", "start", "end"], rows, caption=caption)
    return 0


async def _entities(client: Any, args: argparse.Namespace, out: Output) -> int:
    entities = await client.list_entities()
    if out.as_json:
        out.json(entities)
        return 0
    rows = [
        [
            entity.name,
            entity.service,
            entity.model,
            ", ".join(entity.key),
            "?" if entity.count is None else entity.count,
        ]
        for entity in entities
    ]
    caption = "?: not counted (counting would scan the table)" if any(e.count is None for e in entities) else None
    out.table(f"entities at {client_url(args)}", ["name", "service", "model", "key", "entries"], rows, caption=caption)
    return 0


async def _entity(client: Any, args: argparse.Namespace, out: Output) -> int:
    record = await client.get_entity(args.name, args.key if args.sort is None else (args.key, args.sort))
    if out.as_json:
        out.json(record)
    else:
        shown = record.key if isinstance(record.key, str) else f"({', '.join(record.key)})"
        out.panel(f"entity {record.entity} {shown}", [("version", record.version), ("value", _cell(record.value))])
    return 0


async def _execution(client: Any, args: argparse.Namespace, out: Output) -> int:
    execution = await client.get_execution(args.id)
    if out.as_json:
        out.json(execution)
    else:
        out.panel(f"execution {execution.id}", _execution_fields(execution))
    return 0


async def _history(client: Any, args: argparse.Namespace, out: Output) -> int:
    history = await client.get_execution_history(args.id)
    if out.as_json:
        out.json(history)
    else:
        out.table(f"history of {args.id}", ["seq", "type", "time", "details"], [_history_row(e) for e in history])
    return 0


async def _logs(client: Any, args: argparse.Namespace, out: Output) -> int:
    logs = await client.get_execution_logs(args.id)
    if out.as_json:
        out.json(logs)
    elif not logs:
        out.line(f"no logs for {args.id}: nothing it ran has printed or logged anything")
    else:
        rows = [[entry.time, entry.source, entry.message] for entry in logs]
        out.table(f"logs of {args.id}", ["time", "source", "message"], rows)
    return 0


async def _timeline(client: Any, args: argparse.Namespace, out: Output) -> int:
    """Draw an execution's timeline in the terminal, or write it as one self-contained HTML page (--html)."""
    import asyncio
    from pathlib import Path

    from eventual_nb.timeline import read_snapshot, timeline_json
    from eventual_nb.timeline.svg import render_page

    snapshot = await read_snapshot(client, args.id)
    timeline = snapshot.timeline()
    if args.html:
        path = Path(args.html)
        try:
            page = render_page(timeline, snapshot.history, snapshot.logs)
            await asyncio.to_thread(path.write_text, page, encoding="utf-8")
        except OSError as exc:
            return out.error("OSError", f"cannot write the timeline of {args.id} to {path}: {exc.strerror or exc}")
        if out.as_json:
            out.json({"execution_id": args.id, "html": str(path), "events": timeline.events})
        else:
            said = f"wrote the timeline of {args.id} ({timeline.events} events) to {path}"
            out.console.print(said, soft_wrap=True)  # the path whole, however narrow the terminal
        return 0
    if out.as_json:
        out.json(timeline_json(timeline))
        return 0
    from eventual_nb.timeline.terminal import render_terminal

    out.console.print(render_terminal(timeline, width=out.console.width))
    return 0


async def _signal(client: Any, args: argparse.Namespace, out: Output) -> int:
    payload = _parse_json_or_string(args.payload)
    await client.send_signal(args.id, args.signal, payload, id=args.signal_id)
    if out.as_json:
        out.json({"execution_id": args.id, "signal": args.signal, "payload": payload, "id": args.signal_id})
    else:
        out.line(f"sent signal {args.signal} to {args.id}")
    return 0


async def _publish(client: Any, args: argparse.Namespace, out: Output) -> int:
    fields = {} if args.payload is None else _parse_json_or_string(args.payload)
    if not isinstance(fields, dict):
        raise UsageError(f"PAYLOAD must be a JSON object of the event's fields, got {args.payload!r}")
    await client.publish_events({"name": args.event, "event": fields})
    if out.as_json:
        out.json({"published": {"name": args.event, "event": fields}})
    else:
        out.line(f"published {args.event}")
    return 0


#: how much of an event's fields the `events` table shows
PREVIEW_CHARS = 60


async def _events(client: Any, args: argparse.Namespace, out: Output) -> int:
    from eventual_nb import errors
    from eventual_nb.runtime.base import check_max_results

    try:
        check_max_results(args.max_results)
    except errors.InputValidationError as exc:
        raise UsageError(f"--max-results: {exc.message}") from None
    events = await client.list_events(max_results=args.max_results, source=args.source, name=args.name)
    if out.as_json:
        out.json(events)
        return 0
    rows = []
    for event in events:
        payload = _cell(event.event)
        if len(payload) > PREVIEW_CHARS:
            payload = payload[: PREVIEW_CHARS - 1] + "…"
        rows.append([event.time, event.source, event.name, payload])
    out.table(f"{len(rows)} event(s), newest first", ["time", "source", "name", "payload"], rows)
    return 0


async def _cancel(client: Any, args: argparse.Namespace, out: Output) -> int:
    await client.cancel_execution(args.id)
    if out.as_json:
        out.json({"execution_id": args.id, "cancel_requested": True})
    else:
        out.line(f"cancel requested for {args.id}")
    return 0


async def _schedules(client: Any, args: argparse.Namespace, out: Output) -> int:
    """The served schedules: spec, next fire (local time and how soon), paused, last fire and execution."""
    from datetime import UTC, datetime

    from eventual_nb.schedules import next_fire_text

    schedules = await client.list_schedules()
    if out.as_json:
        out.json(schedules)
        return 0
    now = datetime.now(UTC)
    rows = [
        [
            info.name,
            info.workflow,
            info.describe(),
            next_fire_text(info, now),
            "yes" if info.paused else "no",
            info.last_fire,
            info.last_execution_id,
            info.skipped,
        ]
        for info in schedules
    ]
    columns = ["name", "workflow", "schedule", "next fire", "paused", "last fire", "last execution", "skipped"]
    out.table(f"schedules at {client_url(args)}", columns, rows)
    return 0


async def _schedule(client: Any, args: argparse.Namespace, out: Output) -> int:
    """`schedule pause|resume|trigger NAME`."""
    if args.action == "trigger":
        handle = await client.trigger_schedule(args.name)
        already = bool(getattr(handle, "already_running", False))
        if out.as_json:
            out.json({"schedule": args.name, "execution_id": handle.id, "already_running": already})
        elif already:
            out.line(f"{handle.id} was already started by this second's trigger of {args.name}; not started again")
        else:
            out.line(f"triggered {args.name}: started {handle.id}")
        return 0
    if args.action == "pause":
        await client.pause_schedule(args.name)
    else:
        await client.resume_schedule(args.name)
    paused = args.action == "pause"
    if out.as_json:
        out.json({"schedule": args.name, "paused": paused})
    else:
        out.line(f"{'paused' if paused else 'resumed'} {args.name}" + ("" if paused else " (missed fires are not run)"))
    return 0


async def _replay(client: Any, args: argparse.Namespace, out: Output) -> int:
    """Fetch the recorded history over HTTP and re-run it against TARGET's code, here, in this process."""
    import eventual_nb as ev
    from eventual_nb.loader import load_target
    from eventual_nb.workflows import find_workflow

    history = await client.get_execution_history(args.id)
    if not history or history[0].type != "WorkflowStarted":
        return out.error("DeterminismError", f"the history of {args.id} does not start with WorkflowStarted")
    name = history[0].workflow
    services = load_target(args.target)
    definition = find_workflow(name, services) or find_workflow(name)
    if definition is None:
        defined = sorted({w for service in services for w in service.workflows}) or ["none"]
        raise ev.WorkflowNotFound(
            f"{args.target} defines no workflow named '{name}' (the workflow of {args.id}); "
            f"it defines: {', '.join(defined)}",
            workflow=name,
        )
    divergence: ev.DeterminismError | None = None
    commands: list[Any] = []
    try:
        commands = ev.testing.replay(definition, history, execution_id=args.id)
    except ev.DeterminismError as exc:
        divergence = exc
    else:
        ended = history[-1].type in ("WorkflowSucceeded", "WorkflowFailed", "WorkflowCancelled")
        if ended and commands:
            # the recorded execution ended, yet the code would carry on: it no longer does what it recorded
            kinds = ", ".join(getattr(command, "kind", type(command).__name__) for command in commands)
            divergence = ev.DeterminismError(
                f"execution '{args.id}' ended ({history[-1].type}) but the current code does more after its "
                f"{len(history)} recorded events: it would issue {kinds}",
                execution_id=args.id,
            )
    if divergence is not None:
        print(f"replay of {args.id} diverges from the current code: {divergence.message}", file=sys.stderr)
        if out.as_json:
            out.json({"execution_id": args.id, "matches": False, "events": len(history), **divergence.to_json()})
        return EXIT_FAILED
    if out.as_json:
        out.json({"execution_id": args.id, "matches": True, "events": len(history), "next_commands": commands})
    else:
        out.line(f"replay of {args.id} matches the current code ({len(history)} events)")
    return 0


# -- serve --------------------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    """Load TARGET, open the local runtime's database and serve the service over HTTP until stopped."""
    import re
    from pathlib import Path

    out = Output(bool(args.json))
    token = os.environ.get(TOKEN_ENV) or None
    if args.host not in LOOPBACK_HOSTS and token is None:
        message = (
            f"refusing to listen on {args.host} without a token: set {TOKEN_ENV} (clients then pass it with "
            f"--token or {TOKEN_ENV}), or listen on loopback ({', '.join(LOOPBACK_HOSTS)})"
        )
        print(f"{PROG} serve: error: {message}", file=sys.stderr)
        if out.as_json:
            out.json({"error": "UsageError", "message": message})
        return 2

    import eventual_nb as ev
    from eventual_nb.loader import load_target

    try:
        services = load_target(args.target)
    except ev.EventualError as exc:
        return out.error(type(exc).__name__, exc.message, exc.to_json())

    from eventual_nb.runtime.tokens import environment_signing_key
    from eventual_nb.server import create_app
    from eventual_nb.server import serve as serve_app

    first = services[0].name if services else "state"
    db = Path(args.db) if args.db else Path(".eventual") / (re.sub(r"[^A-Za-z0-9._-]", "_", first) + ".db")
    try:
        environment_signing_key()  # the runtime reads it at start, inside the server: refuse a bad one here
        _check_database(db)
        bus = _check_bus(Path(args.bus) if args.bus else None, db)
        runtime = ev.LocalRuntime(path=str(db), services=[*services], bus=bus)
        wide = args.host not in LOOPBACK_HOSTS  # clients name the machine however they reach it
        app = create_app(runtime, services, token=token, allowed_hosts=["*"] if wide else args.allow_host)
    except ev.EventualError as exc:
        return out.error(type(exc).__name__, exc.message, exc.to_json())
    names = ", ".join(service.name for service in services)

    def ready(url: str) -> None:
        print(f"serving {names} on {url} (db {db}, event bus {bus})", file=sys.stderr, flush=True)

    try:
        serve_app(app, args.host, args.port, on_ready=ready)  # blocks until SIGINT/SIGTERM
    except KeyboardInterrupt:
        return 0
    except ev.EventualError as exc:
        return out.error(type(exc).__name__, exc.message, exc.to_json())
    return 0


def _check_database(db: Any) -> None:
    """Open and close the database once before serving, so a file another process holds (or one that cannot
    be opened) is reported as one clear error here rather than as a traceback from the server's startup."""
    import sqlite3

    from eventual_nb import errors
    from eventual_nb.runtime.local.store import Database

    try:
        Database(db).close()
    except (OSError, sqlite3.Error) as exc:
        raise errors.EventualError(f"cannot open the database {db}: {type(exc).__name__}: {exc}") from None


def _check_bus(bus: Any, db: Any) -> Any:
    """The event bus to serve with (`--bus`, else `bus.db` beside the database), opened and closed once
    here for the same reason as the database."""
    from eventual_nb.runtime.local.bus import Bus, default_bus_path

    path = bus if bus is not None else default_bus_path(db)
    Bus(path).close()
    return path


# -- export -------------------------------------------------------------------------------------------


def export_service(notebook: str | Path, output: str | Path, *, zip: bool, force: bool) -> Any:
    """Write NOTEBOOK's service as a package into OUTPUT: what `eventual-nb export` and the notebook's
    `%eventual export` both run (`exporter.export_package`, whose result they report).

    The exporter is imported here, when asked for, so that neither `eventual_nb` nor the kernel extension
    loads it otherwise. Raises `EventualError` (the exporter's errors name the cell and line) and
    `ImportError` when the notebook extra is missing.
    """
    from exporter import export_package

    return export_package(notebook, output, zip=zip, force=force)


def export(args: argparse.Namespace) -> int:
    """Write NOTEBOOK's service as a package into DIR; exit 1 with the cell and line on bad input."""
    out = Output(bool(args.json))
    from eventual_nb import errors

    try:
        result = export_service(args.notebook, args.output, zip=args.zip, force=args.force)
    except ImportError as exc:
        message = f"{PROG} export needs the notebook extra: pip install 'eventual-nb[notebook]' ({exc})"
        print(message, file=sys.stderr)
        if out.as_json:
            out.json({"error": "MissingDependency", "message": message})
        return EXIT_FAILED
    except errors.EventualError as exc:
        return out.error(type(exc).__name__, exc.message, exc.to_json())
    if out.as_json:
        out.json({"dir": str(result.directory), "files": result.files, "lambda_zip": result.lambda_zip})
        return EXIT_OK
    out.line(
        f"exported service '{result.manifest['name']}' from {result.manifest['notebook']} to {result.directory} "
        f"({len(result.files)} files)"
    )
    for name in result.files:
        out.line(f"  {name}")
    if result.lambda_zip is not None:
        out.line(f"lambda.zip sha256 {result.lambda_zip['sha256']} ({result.lambda_zip['size']} bytes)")
    return EXIT_OK


# -- notebooks as tests (papermill) -------------------------------------------------------------------


def _usage_error(out: Output, message: str) -> int:
    print(f"error: UsageError: {message}", file=sys.stderr, flush=True)
    if out.as_json:
        out.json({"error": "UsageError", "message": message})
    return EXIT_USAGE


def _notebook_runs(out: Output, verb: str) -> Any:
    """kernel_ext.notebook_runs, or None after saying which extra is missing (papermill, nbformat)."""
    try:
        from kernel_ext import notebook_runs
    except ImportError as exc:
        message = f"{PROG} {verb} needs the notebook extra: pip install 'eventual-nb[notebook]' ({exc})"
        print(message, file=sys.stderr)
        if out.as_json:
            out.json({"error": "MissingDependency", "message": message})
        return None
    return notebook_runs


def _cell_timeout(runs: Any, seconds: float | None) -> float | None:
    """``--timeout``: the engine's default when absent; 0 means no limit."""
    if seconds is None:
        return float(runs.DEFAULT_CELL_TIMEOUT)
    return None if seconds == 0 else seconds


def _report_runs(out: Output, runs: Any, results: list[Any], output_dir: str | None) -> int:
    """The summary table, then every failure in full (notebook, cell index, source, traceback); exit 0/1."""
    failed = [run for run in results if not run.passed]
    if out.as_json:
        out.json(
            {
                "runs": [run.to_json() for run in results],
                "passed": len(results) - len(failed),
                "failed": len(failed),
                "output_dir": output_dir,
            }
        )
        return EXIT_FAILED if failed else EXIT_OK
    rows = []
    for run in results:
        runtime = run.runtime or "default"
        if run.ran_runtime and run.ran_runtime != run.runtime:
            runtime += f" (ran {run.ran_runtime})"
        rows.append([run.notebook, runtime, run.status.upper(), f"{run.duration:.1f} s", run.output])
    out.table("notebooks", ["notebook", "runtime", "status", "duration", "output"], rows)
    for run in failed:
        out.line("")
        out.line(f"FAILED {run.notebook} (runtime {run.runtime or 'default'}; output {run.output})")
        for line in runs.failure_text(run.failure).splitlines():
            out.line(line)
    total = sum(run.duration for run in results)
    summary = f"{len(results) - len(failed)} passed, {len(failed)} failed ({total:.1f} s of notebook time)"
    if output_dir is not None:
        summary += f"; output notebooks in {output_dir}"
    out.line("")
    out.line(summary)
    return EXIT_FAILED if failed else EXIT_OK


def run_notebook(args: argparse.Namespace) -> int:
    """Run one notebook with papermill's `eventual` engine into a new output notebook (never the input)."""
    import tempfile
    from pathlib import Path

    out = Output(bool(args.json))
    runs = _notebook_runs(out, "run")
    if runs is None:
        return EXIT_FAILED
    notebook = Path(args.notebook)
    if not notebook.is_file() or notebook.suffix != ".ipynb":
        return _usage_error(out, f"no such notebook: {notebook}")
    try:
        runs.check_notebook(notebook)
    except ValueError as exc:
        return _usage_error(out, str(exc))
    if args.timeout is not None and args.timeout < 0:
        return _usage_error(out, f"--timeout must be 0 (no limit) or more seconds, got {args.timeout}")
    if args.output is None:
        output = Path(tempfile.mkdtemp(prefix="eventual-nb-run-out-")) / notebook.name
    else:
        output = Path(args.output)
        if output.is_dir():
            output = output / notebook.name
    if output.resolve() == notebook.resolve():
        return _usage_error(out, f"the output {output} is the input notebook; name another file with -o")
    parameters = {name: runs.parse_parameter_value(value) for name, value in args.parameter}
    result = runs.run_notebook(notebook, output, parameters, cell_timeout=_cell_timeout(runs, args.timeout))
    return _report_runs(out, runs, [result], None)


def test_notebooks(args: argparse.Namespace) -> int:
    """Run notebooks (files, or every notebook under directories) as tests, in parallel; exit 1 on a failure."""
    import tempfile
    from pathlib import Path

    out = Output(bool(args.json))
    runs = _notebook_runs(out, "test")
    if runs is None:
        return EXIT_FAILED
    try:
        notebooks = runs.discover(args.paths or ["notebooks"])
    except (FileNotFoundError, ValueError) as exc:
        return _usage_error(out, str(exc))
    if not notebooks:
        return _usage_error(out, f"no notebooks under {', '.join(args.paths or ['notebooks'])}")
    if args.jobs is not None and args.jobs < 1:
        return _usage_error(out, f"--jobs must be 1 or more, got {args.jobs}")
    if args.timeout is not None and args.timeout < 0:
        return _usage_error(out, f"--timeout must be 0 (no limit) or more seconds, got {args.timeout}")
    output_dir = Path(args.output_dir) if args.output_dir else Path(tempfile.mkdtemp(prefix="eventual-nb-test-"))
    outputs = runs.output_paths(notebooks, output_dir)
    inputs = {notebook.resolve() for notebook in notebooks}
    if any(output.resolve() in inputs for output in outputs):
        return _usage_error(out, f"--output-dir {output_dir} would overwrite the notebooks it runs")
    parameters = {name: runs.parse_parameter_value(value) for name, value in args.parameter}
    jobs = min(args.jobs or os.cpu_count() or 1, len(notebooks))

    def progress(run: Any) -> None:
        if not out.as_json:
            out.line(f"{run.status.upper():<6} {run.notebook} [{run.runtime or 'default'}] {run.duration:.1f} s")

    if not out.as_json:
        out.line(f"running {len(notebooks)} notebook(s), {jobs} at a time")
    results = runs.run_notebooks(
        notebooks, outputs, parameters, jobs=jobs, cell_timeout=_cell_timeout(runs, args.timeout), on_done=progress
    )
    if args.junit:
        junit = Path(args.junit)
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.write_bytes(runs.junit_xml(results))
    return _report_runs(out, runs, results, str(output_dir))


# -- deploy / destroy ---------------------------------------------------------------------------------


def _stack_progress(out: Output) -> tuple[Callable[[Any], None], Any]:
    """The progress callback of deploy/destroy and the context that shows it: phases and stack events as
    lines (a spinner on a terminal); nothing with ``--json``, whose stdout is the one JSON result."""
    import contextlib

    if out.as_json:
        return (lambda _item: None), contextlib.nullcontext()
    from rich.text import Text

    status: Any = contextlib.nullcontext()
    if out.console.is_terminal:
        status = out.console.status("working…")

    def show(item: Any) -> None:
        if isinstance(item, str):
            out.console.print(Text(item))
            if hasattr(status, "update"):
                status.update(item)
            return
        style = "red" if item.failed else "green" if item.status.endswith("_COMPLETE") else "yellow"
        line = Text(f"{item.time:%H:%M:%S} ")
        line.append(f"{item.status:<22}", style=style)
        line.append(f" {item.resource} ({item.resource_type})")
        if item.reason:
            line.append(f" {item.reason}", style="red" if item.failed else "dim")
        out.console.print(line)

    return show, status


def _exporter_missing(out: Output, verb: str, exc: ImportError) -> int:
    message = f"{PROG} {verb} needs the exporter and boto3: pip install 'eventual-nb[notebook,aws]' ({exc})"
    return out.error("MissingDependency", message)


def deploy(args: argparse.Namespace) -> int:
    """Deploy an export (DIR) as a CloudFormation stack through a change set; print its outputs."""
    out = Output(bool(args.json))
    try:
        from exporter.deploy import deploy as deploy_export
    except ImportError as exc:
        return _exporter_missing(out, "deploy", exc)
    from eventual_nb import errors

    try:
        source_buses = _source_bus_options(args.source_bus)
    except UsageError as exc:
        return _usage_error(out, str(exc))
    show, status = _stack_progress(out)
    try:
        with status:
            result = deploy_export(
                args.dir,
                args.stack,
                region=args.region,
                endpoint_url=args.endpoint_url,
                bucket=args.bucket,
                source_buses=source_buses,
                progress=show,
            )
    except errors.EventualError as exc:
        return out.error(type(exc).__name__, exc.message, exc.to_json())
    if out.as_json:
        out.json(dataclasses.asdict(result))
        return EXIT_OK
    done = {"created": "created", "updated": "updated", "unchanged": "is up to date"}[result.action]
    out.line(f"stack {result.stack} {done} in {result.region} ({result.status})")
    out.table("outputs", ["output", "value"], [[key, value] for key, value in sorted(result.outputs.items())])
    return EXIT_OK


def _source_bus_options(options: list[str]) -> dict[str, str]:
    """`--source-bus SERVICE=BUS`, repeatable."""
    buses: dict[str, str] = {}
    for option in options:
        service, equals, bus = option.partition("=")
        if not (service and equals and bus):
            raise UsageError(f"--source-bus takes SERVICE=BUS (e.g. bank=bank-prod-bank), got {option!r}")
        buses[service] = bus
    return buses


def destroy(args: argparse.Namespace) -> int:
    """Delete a deployed stack and wait until it is gone."""
    out = Output(bool(args.json))
    try:
        from exporter.deploy import destroy as destroy_stack
    except ImportError as exc:
        return _exporter_missing(out, "destroy", exc)
    from eventual_nb import errors

    show, status = _stack_progress(out)
    try:
        with status:
            result = destroy_stack(args.stack, region=args.region, endpoint_url=args.endpoint_url, progress=show)
    except errors.EventualError as exc:
        return out.error(type(exc).__name__, exc.message, exc.to_json())
    if out.as_json:
        out.json(dataclasses.asdict(result))
    else:
        out.line(f"stack {result.stack} deleted from {result.region} ({result.status})")
    return EXIT_OK


# -- the parser ---------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors name the sub-command's full path (e.g. ``eventual-nb start``)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _common(client: bool) -> _Parser:
    """Options every verb shares (``--json``), plus ``--url``/``--token`` for the service-client verbs."""
    parent = _Parser(add_help=False)
    parent.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")
    if client:
        from eventual_nb.client import DEFAULT_URL

        parent.add_argument(
            "--url",
            default=None,
            metavar="URL",
            help=f"the service to talk to (default: ${URL_ENV}, else the local server, {DEFAULT_URL})",
        )
        parent.add_argument(
            "--token",
            default=None,
            metavar="TOKEN",
            help=f"bearer token for the internal routes (default: ${TOKEN_ENV}; needed when the server "
            "listens beyond loopback)",
        )
    return parent


def _port(text: str) -> int:
    """argparse type of ``--port``: a TCP port, 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 (any free port) to 65535, got {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    """Declare every verb with its flags; a separate function so tests and docs can inspect it."""
    parser = _Parser(
        prog=PROG,
        description="Durable workflows, events and APIs for Python and Jupyter (Eventual's model).",
    )
    from eventual_nb._version import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)

    plain = [_common(client=False)]
    client = [_common(client=True)]

    def add(name: str, help: str, parents: list[_Parser], handler: Handler) -> _Parser:
        sub = verbs.add_parser(name, help=help, description=help, parents=parents)
        sub.set_defaults(handler=handler)
        return sub

    # --- running and packaging a service ----------------------------------------------------------
    p = add("serve", "serve a service over HTTP with the local runtime", plain, serve)
    p.add_argument("target", metavar="TARGET", help="a .py file, a module, an exported package dir or a notebook")
    p.add_argument("--db", metavar="PATH", help="SQLite database of the local runtime (default .eventual/<service>.db)")
    p.add_argument(
        "--bus",
        metavar="PATH",
        help="event bus shared with the services other processes serve (default bus.db beside the database, so "
        "services served from one directory exchange events)",
    )
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"interface to listen on (default {DEFAULT_HOST}; anything but loopback needs ${TOKEN_ENV})",
    )
    p.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)"
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host header is NAME (repeatable; '*.example.com' for its subdomains, "
        "'*' for any). A loopback server answers only localhost and loopback addresses, against DNS rebinding; "
        "beyond loopback every host is answered (the token guards the internal routes)",
    )

    p = add("export", "export a notebook as a deployable service package", plain, export)
    p.add_argument("notebook", metavar="NOTEBOOK")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory to write the package to")
    p.add_argument("--zip", action="store_true", help="also build the reproducible lambda.zip")
    p.add_argument(
        "--force",
        action="store_true",
        help="write into DIR even if it holds files and is not an earlier export (only the files an export "
        "writes are replaced)",
    )

    parameter_help = (
        "a papermill parameter, e.g. -p runtime local (repeatable; True/False/None, numbers, else a string, as "
        "papermill's -p)"
    )
    timeout_help = "seconds one cell may run before the run fails (default 300; 0 for no limit)"
    p = add(
        "run", "run a notebook with papermill (the Eventual kernel, a fresh working directory)", plain, run_notebook
    )
    p.add_argument("notebook", metavar="NOTEBOOK")
    p.add_argument(
        "-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help=parameter_help
    )
    p.add_argument(
        "-o", "--output", metavar="OUTPUT", help="the executed notebook (a file or a directory; default: a temp dir)"
    )
    p.add_argument("--timeout", type=float, metavar="SECONDS", help=timeout_help)

    p = add("test", "run notebooks as tests (in parallel; exit 1 if one fails)", plain, test_notebooks)
    p.add_argument("paths", nargs="*", metavar="PATHS", help="notebooks or directories (default: notebooks/)")
    p.add_argument(
        "-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help=parameter_help
    )
    p.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML to FILE")
    p.add_argument("--jobs", type=int, metavar="N", help="notebooks run at the same time (default: the CPU count)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help=timeout_help)
    p.add_argument("--output-dir", metavar="DIR", help="where the executed notebooks go (default: a new temp dir)")

    kernel = verbs.add_parser(
        "kernel", help="manage the Eventual Jupyter kernel", description="manage the Eventual Jupyter kernel"
    )
    kernel_verbs = kernel.add_subparsers(dest="kernel_verb", metavar="ACTION", parser_class=_Parser)
    kernel_verbs.required = True
    k = kernel_verbs.add_parser(
        "install",
        help='install the kernelspec "Eventual (Python 3)" named eventual',
        description='install the kernelspec "Eventual (Python 3)" named eventual',
        parents=plain,
    )
    k.add_argument("--user", action="store_true", help="install for the current user only")
    k.add_argument("--prefix", metavar="PREFIX", help="install under this prefix (e.g. a venv)")
    k.add_argument("--sys-prefix", action="store_true", help="install into this Python's prefix (sys.prefix)")
    k.set_defaults(handler=cmd_kernel_install)

    p = add(
        "deploy", "deploy an exported package to AWS (creates or updates the stack via a change set)", plain, deploy
    )
    p.add_argument("dir", metavar="DIR", help="a directory written by `eventual-nb export NOTEBOOK -o DIR --zip`")
    p.add_argument("--stack", required=True, metavar="NAME", help="CloudFormation stack name")
    p.add_argument("--region", metavar="REGION", help="AWS region (default: boto3's)")
    p.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="AWS endpoint (an emulator such as moto's server; deploys with Emulator=true)",
    )
    p.add_argument(
        "--bucket",
        metavar="BUCKET",
        help="S3 bucket for lambda.zip (default: eventual-nb-code-<account>-<region>, created if missing)",
    )
    p.add_argument(
        "--source-bus",
        action="append",
        default=[],
        metavar="SERVICE=BUS",
        help="the event bus of another service whose events this one subscribes to (repeatable; default: the bus "
        "of a stack named after that service, <service>-<service>)",
    )

    p = add("destroy", "delete a deployed stack (its tables, queues, functions and logs)", plain, destroy)
    p.add_argument("--stack", required=True, metavar="NAME", help="CloudFormation stack name")
    p.add_argument("--region", metavar="REGION", help="AWS region (default: boto3's)")
    p.add_argument("--endpoint-url", metavar="URL", help="AWS endpoint (an emulator such as moto's server)")

    # --- service-client verbs -----------------------------------------------------------------
    add("workflows", "list the service's workflows", client, client_verb(_workflows))

    p = add("start", "start a workflow execution", client, client_verb(_start))
    p.add_argument("workflow", metavar="WORKFLOW")
    p.add_argument(
        "input", nargs="?", metavar="INPUT", help="the input as JSON (text that is not JSON is sent as a string)"
    )
    p.add_argument("--name", metavar="NAME", help="execution name (makes the start idempotent)")
    p.add_argument("--timeout", metavar="DURATION", help="workflow timeout for this execution (e.g. 30s, 5m, 2 days)")
    p.add_argument(
        "--follow",
        action="store_true",
        help="print history events as they are recorded until the execution ends, then its result "
        "(exit 1 unless it succeeded)",
    )

    p = add("executions", "list executions", client, client_verb(_executions))
    p.add_argument("--workflow", metavar="WORKFLOW", help="only this workflow's executions")
    p.add_argument(
        "--status",
        action="append",
        type=str.upper,
        choices=STATUSES,
        metavar="STATUS",
        help=f"only executions in this status (repeatable; one of {', '.join(STATUSES)})",
    )
    p.add_argument("--max-results", type=int, default=100, metavar="N", help="page size (default 100)")
    p.add_argument("--next-token", metavar="TOKEN", help="continue from a previous page")
    p.add_argument("--desc", action="store_true", help="newest first")

    for name, help, run in (
        ("execution", "show one execution", _execution),
        ("history", "show an execution's history", _history),
        ("logs", "show an execution's logs", _logs),
        ("cancel", "cancel an execution", _cancel),
    ):
        p = add(name, help, client, client_verb(run))
        p.add_argument("id", metavar="ID", help="execution id (<workflow>/<name>)")

    p = add(
        "timeline",
        "draw an execution's timeline: its calls, waits and retries on a time axis (or write it as HTML)",
        client,
        client_verb(_timeline),
    )
    p.add_argument("id", metavar="ID", help="execution id (<workflow>/<name>)")
    p.add_argument(
        "--html",
        metavar="PATH",
        help="write one self-contained HTML page (picture, history, logs; no network) to PATH, e.g. for a bug report",
    )

    p = add(
        "replay",
        "re-run an execution's recorded history against the current code and report divergence",
        client,
        client_verb(_replay),
    )
    p.add_argument("id", metavar="ID", help="execution id (<workflow>/<name>)")
    p.add_argument(
        "--target",
        required=True,
        metavar="TARGET",
        help="the current code: a .py file, a module or an exported package dir (as for serve)",
    )

    add(
        "entities",
        "list the service's entities (with their number of entries where that is cheap)",
        client,
        client_verb(_entities),
    )
    p = add("entity", "show one entry of an entity: its value and version", client, client_verb(_entity))
    p.add_argument("name", metavar="NAME", help="entity name")
    p.add_argument("key", metavar="KEY", help="the key (a two-part key's partition)")
    p.add_argument("sort", nargs="?", metavar="SORT", help="a two-part key's sort key")

    p = add("signal", "send a signal to an execution", client, client_verb(_signal))
    p.add_argument("id", metavar="ID", help="execution id (<workflow>/<name>)")
    p.add_argument("signal", metavar="SIGNAL", help="signal name")
    p.add_argument(
        "payload", nargs="?", metavar="PAYLOAD", help="the payload as JSON (text that is not JSON is sent as a string)"
    )
    p.add_argument(
        "--id", dest="signal_id", metavar="SIGNAL_ID", help="signal id: a second send with the same id is ignored"
    )

    add(
        "schedules",
        "list the service's schedules: next fire, paused, last execution",
        client,
        client_verb(_schedules),
    )
    p = add("schedule", "pause, resume or trigger a schedule", client, client_verb(_schedule))
    p.add_argument(
        "action",
        choices=("pause", "resume", "trigger"),
        metavar="ACTION",
        help="pause (stop firing), resume (fire again from now; missed fires are not run) or trigger (start one "
        "execution now, with now as its input)",
    )
    p.add_argument("name", metavar="NAME", help="schedule name (see `eventual-nb schedules`)")

    p = add("publish", "publish an event", client, client_verb(_publish))
    p.add_argument("event", metavar="EVENT", help="event name")
    p.add_argument("payload", nargs="?", metavar="PAYLOAD", help="the event's fields as a JSON object")

    p = add(
        "events",
        "list the recent events on the event bus (a local server's: every service's there), newest first",
        client,
        client_verb(_events),
    )
    p.add_argument("--source", metavar="SERVICE", help="only the events this service published")
    p.add_argument("--name", metavar="EVENT", help="only events of this name")
    p.add_argument("--max-results", type=int, default=20, metavar="N", help="how many (default 20, at most 1000)")

    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit status (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
