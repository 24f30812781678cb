"""The cell magics (`%%workflow`, `%%activity`, `%%api`, `%%event`, `%%subscription`, `%%signal`) and
the `%eventual` line magic.

Magics are thin sugar over the decorators: a magic cell *defines* its function or class
as plain Python, the flags are the decorator's options, and the magic applies the decorator to what
the cell defined. Which definition: the last top-level function of the cell (earlier ones stay plain
helpers); for `%%event` and `%%signal` every class the cell defines. Flag mistakes are `UsageError`s
(IPython prints the usage); failures in the body raise with `Cell In[n], line k` of the notebook.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shlex
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import MagicArgumentParser
from IPython.display import HTML, display

import eventual_nb as ev
from eventual_nb import magic_syntax
from eventual_nb.durations import parse_duration
from eventual_nb.magic_syntax import FlagError, max_attempts
from eventual_nb.runtime.base import ExecutionHandle, ExecutionStatus, RuntimeBase
from eventual_nb.runtime.core.schedules import define_schedule
from eventual_nb.runtime.testing import TestEnvironment
from eventual_nb.service import current_service
from eventual_nb.timeline import read_snapshot
from eventual_nb.timeline.svg import CSS, history_table, render_fragment
from kernel_ext.cells import Definitions, run_body, top_level_definitions
from kernel_ext.redefine import check_redefinition
from kernel_ext.widgets import ExecutionsTable, ExecutionView, SchedulesTable, WidgetPump

if TYPE_CHECKING:
    from kernel_ext.host import RuntimeHost

F = TypeVar("F", bound=Callable[..., Any])


def _flags(magic: str) -> Callable[[F], F]:
    """Document a cell magic's flags (what `%%magic?` shows) from `eventual_nb.magic_syntax`, the grammar
    the exporter reads too."""

    def document(method: F) -> F:
        method.__doc__ = f"{method.__doc__}\n\n{magic_syntax.flags_help(magic)}"
        return method

    return document


def _parse(magic: str, line: str) -> Any:
    """The magic line's flags; a flag mistake is IPython's `UsageError` (printed without a traceback)."""
    try:
        return magic_syntax.parse_flags(magic, line)
    except FlagError as exc:
        raise UsageError(exc.message) from None


def _retry_policy(retries: int | None) -> ev.RetryPolicy | None:
    attempts = max_attempts(retries)
    return None if attempts is None else ev.RetryPolicy(max_attempts=attempts)


def _say(text: str) -> None:
    """A one-line confirmation in the cell's own output (the main thread, during the cell)."""
    print(text)


class RecentErrors(logging.Handler):
    """Keeps the last errors `eventual_nb` logged, for `%eventual status` (instead of printing them)."""

    def __init__(self, keep: int = 20) -> None:
        super().__init__(level=logging.WARNING)
        self._records: collections.deque[str] = collections.deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        self._records.append(f"{record.levelname} {record.getMessage()}")

    def lines(self) -> list[str]:
        return list(self._records)


@magics_class
class EventualMagics(Magics):
    """Registered by `%load_ext eventual_nb`; holds the kernel's runtime host and widget pump."""

    def __init__(self, shell: Any, host: RuntimeHost, pump: WidgetPump) -> None:
        super().__init__(shell)
        self.host = host
        self.pump = pump
        #: errors the runtime logged (from its thread), shown by `%eventual status`
        self.recent_errors = RecentErrors()

    # -------------------------------------------------------------------------------------- helpers

    def _definitions(self, cell: str) -> Definitions:
        __tracebackhide__ = True
        found = top_level_definitions(cell)
        if found is None:
            self._run(cell)  # raises the SyntaxError, pointing at the notebook line
            raise UsageError("the cell does not parse")  # not reached: IPython's parser agrees with ast's
        return found

    def _target(self, magic: str, cell: str) -> str:
        """The function the magic decorates (`magic_syntax.decorated_function`)."""
        __tracebackhide__ = True
        found = self._definitions(cell)
        functions = [(name, name in found.async_functions) for name in found.all_functions]
        try:
            return magic_syntax.decorated_function(magic, functions)
        except FlagError as exc:
            raise UsageError(exc.message) from None

    def _run(self, cell: str) -> None:
        __tracebackhide__ = True
        run_body(self.shell, cell)

    @property
    def user_ns(self) -> dict[str, Any]:
        assert self.shell is not None
        return self.shell.user_ns  # type: ignore[no-any-return]

    # ------------------------------------------------------------------------------------ cell magics

    @cell_magic
    @_flags("workflow")
    def workflow(self, line: str, cell: str) -> None:
        """Define a workflow: the cell defines an `async def` taking at most one input."""
        __tracebackhide__ = True
        args = _parse("workflow", line)
        target = self._target("workflow", cell)
        name = args.name or target
        scheduled = magic_syntax.schedule_options(args)
        if scheduled is not None:  # a bad cron line is refused before anything is (re)defined
            try:
                define_schedule(name=name, workflow=name, **scheduled)
            except ev.EventualError as exc:
                raise UsageError(f"%%workflow: {exc.message}") from None
        previous = current_service().workflows.get(name)
        self._run(cell)
        definition = ev.workflow(name=args.name, timeout=args.timeout)(self.user_ns[target])
        self.user_ns[target] = definition
        if scheduled is not None:
            try:
                ev.schedule(**scheduled)(definition)
            except ev.EventualError as exc:  # e.g. a workflow that cannot take its fire time
                raise UsageError(f"%%workflow: {exc.message}") from None
        report = None
        if previous is not None and previous.function is not definition.function:
            report = check_redefinition(self.host, previous, definition)
        if self.host.runtime is not None:
            self.host.runtime.retry_blocked()
        timeout = f" (timeout {definition.timeout})" if definition.timeout is not None else ""
        _say(f"workflow '{name}'{timeout} in service '{current_service().name}'")
        for schedule_name in definition.schedule_names:
            schedule = (definition.service or current_service()).schedules[schedule_name]
            _say(f"schedule '{schedule_name}': {schedule.describe()}, the workflow receives each fire time")
        if report is not None and report.text():
            _say(report.text())

    @cell_magic
    @_flags("activity")
    def activity(self, line: str, cell: str) -> None:
        """Define an activity: the cell defines a function (`async def` or plain `def`)."""
        __tracebackhide__ = True
        args = _parse("activity", line)
        target = self._target("activity", cell)
        self._run(cell)
        definition = ev.activity(
            name=args.name,
            timeout=args.timeout,
            heartbeat_timeout=args.heartbeat_timeout,
            retry=_retry_policy(args.retries),
            inline=args.inline,
        )(self.user_ns[target])
        self.user_ns[target] = definition
        _say(f"activity '{definition.name}' in service '{current_service().name}'")

    @no_var_expand
    @cell_magic
    @_flags("api")
    def api(self, line: str, cell: str) -> None:
        """Define an API route: the cell defines the handler (FastAPI path operation)."""
        __tracebackhide__ = True
        args = _parse("api", line)
        target = self._target("api", cell)
        self._run(cell)
        router = current_service().api
        router.routes[:] = [
            route
            for route in router.routes
            if not (
                getattr(route, "path", None) == args.path and args.method in (getattr(route, "methods", None) or ())
            )
        ]  # re-running the cell replaces its route
        options: dict[str, Any] = {} if args.status_code is None else {"status_code": args.status_code}
        if args.responses:
            options["responses"] = args.responses
        router.add_api_route(args.path, self.user_ns[target], methods=[args.method], **options)
        _say(f"route {args.method} {args.path} in service '{current_service().name}'")

    @cell_magic
    @_flags("event")
    def event(self, line: str, cell: str) -> None:
        """Define events: the cell defines `ev.Event` subclasses (pydantic models)."""
        __tracebackhide__ = True
        _parse("event", line)
        classes = self._definitions(cell).classes
        self._run(cell)
        events = [
            name
            for name in classes
            if isinstance(self.user_ns.get(name), type) and issubclass(self.user_ns[name], ev.Event)
        ]
        if not events:
            raise UsageError(magic_syntax.NO_EVENT_CLASS)
        _say(f"event(s) {', '.join(events)} in service '{current_service().name}'")

    @cell_magic
    @_flags("subscription")
    def subscription(self, line: str, cell: str) -> None:
        """Define a subscription: the cell defines the handler, called with each event."""
        __tracebackhide__ = True
        args = _parse("subscription", line)
        target = self._target("subscription", cell)
        events: list[Any] = []
        for name in args.events:
            value = self.user_ns.get(name)
            events.append(value if isinstance(value, type) and issubclass(value, ev.Event) else name)
        self._run(cell)
        definition = ev.subscription(*events, name=args.name, retry=_retry_policy(args.retries), source=args.source)(
            self.user_ns[target]
        )
        self.user_ns[target] = definition
        _say(f"subscription '{definition.name}' to {', '.join(args.events)} in service '{current_service().name}'")

    @cell_magic
    @_flags("signal")
    def signal(self, line: str, cell: str) -> None:
        """Define signals: each class the cell defines is a payload model, and a signal named after it
        (`await Approval.expect()`, `await Approval.send(execution, Approval(...))`); or write
        `name = ev.signal("name", Payload)` lines."""
        __tracebackhide__ = True
        _parse("signal", line)
        found = self._definitions(cell)
        self._run(cell)
        declared = []
        for name in found.classes:
            payload_type = self.user_ns.get(name)
            if isinstance(payload_type, type):
                ev.signal_model(payload_type)  # the exporter writes the same call as a decorator
                declared.append(name)
        declared += [name for name in found.assigned if isinstance(self.user_ns.get(name), ev.Signal)]
        if not declared:
            raise UsageError(magic_syntax.NO_SIGNAL)
        _say(f"signal(s) {', '.join(declared)} in service '{current_service().name}'")

    # ---------------------------------------------------------------------------------- %eventual

    @line_magic
    def eventual(self, line: str) -> Any:
        """`%eventual VERB ...`: service, runtime, status, executions, schedules, history, logs, serve, stop,
        export, advance. `%eventual help` lists them."""
        __tracebackhide__ = True
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%eventual: {exc}") from None
        if not words or words[0] in ("help", "-h", "--help"):
            _say(VERBS_HELP)
            return None
        verb, rest = words[0], words[1:]
        handler = getattr(self, f"_verb_{verb}", None)
        if handler is None:
            raise UsageError(f"%eventual: unknown verb {verb!r}; verbs: {', '.join(VERBS)}")
        return handler(rest)

    def _parser(self, verb: str) -> MagicArgumentParser:
        """argparse for one verb; its errors are `UsageError`s naming the verb (never SystemExit)."""
        return MagicArgumentParser(prog=f"%eventual {verb}", add_help=False)

    def _verb_service(self, words: list[str]) -> None:
        try:
            service = ev.Service(magic_syntax.service_name(words))
        except FlagError as exc:
            raise UsageError(exc.message) from None
        if self.host.runtime is not None and self.host.kind == "local":
            self.host.ensure_runtime(command=f"%eventual service {shlex.join(words)}")
        _say(f"service '{service.name}'" + (f" on {self.host.path}" if self.host.path else ""))

    def _verb_runtime(self, words: list[str]) -> None:
        parser = self._parser("runtime")
        parser.add_argument("kind", choices=["local", "test", "aws"])
        parser.add_argument("--path", help="database file (local; default .eventual/<service>.db)")
        parser.add_argument("--durability", choices=["full", "normal", "off"], default="full")
        parser.add_argument("--bus", help="event bus file shared with other services (local; default .eventual/bus.db)")
        parser.add_argument("--start", help="virtual start time, ISO 8601 (test)")
        parser.add_argument("--stack", help="CloudFormation stack deployed with `eventual-nb deploy` (aws)")
        parser.add_argument("--region", help="AWS region of the stack (aws; default: boto3's)")
        parser.add_argument("--endpoint-url", help="AWS endpoint, e.g. an emulator such as moto's server (aws)")
        args = parser.parse_args(words)
        command = f"%eventual runtime {shlex.join(words)}"  # named to handles of the runtime it replaces
        if args.kind == "aws":
            if not args.stack:
                raise UsageError(
                    "%eventual runtime aws needs --stack NAME (the stack `eventual-nb deploy DIR --stack NAME` "
                    "created), and optionally --region R and --endpoint-url URL"
                )
            try:
                runtime = self.host.use_aws(args.stack, args.region, args.endpoint_url, command=command)
            except ev.EventualError as exc:
                raise UsageError(f"%eventual runtime aws: {exc.message}") from None
            where = f" at {args.endpoint_url}" if args.endpoint_url else ""
            _say(f"AwsRuntime on stack {args.stack} in {runtime.region}{where} (service '{self.host.service_name}')")
            return
        if args.kind == "local":
            local = self.host.use_local(args.path, args.durability, bus=args.bus, command=command)
            _say(f"LocalRuntime on {self.host.path} (durability {args.durability}, event bus {local.bus_path})")
        else:
            start = None
            if args.start:
                try:
                    start = datetime.fromisoformat(args.start)
                except ValueError:
                    raise UsageError(f"%eventual runtime test: --start must be ISO 8601, got {args.start!r}") from None
            environment = self.host.use_test(start, command=command)
            _say(f"TestEnvironment (virtual clock at {environment.now.isoformat()})")

    def _verb_status(self, words: list[str]) -> None:
        if words:
            raise UsageError("%eventual status takes no arguments")
        runtime = self.host.ensure_runtime()
        service = current_service()
        page = self.host.call(runtime.list_executions(statuses=[ExecutionStatus.IN_PROGRESS], max_results=1000))
        lines = [
            f"service      {service.name}: {len(service.workflows)} workflows, {len(service.activities)} activities, "
            f"{len(service.signals)} signals, {len(service.events)} events, {len(service.subscriptions)} "
            f"subscriptions, {len(service.api.routes) if service._router is not None else 0} routes",
            f"runtime      {type(runtime).__name__}"
            + (f" on {self.host.path}" if self.host.path else "")
            + _stack_of(runtime),
            f"in progress  {len(page.executions)}" + ("+" if page.next_token else ""),
        ]
        if isinstance(runtime, TestEnvironment):
            lines.append(f"virtual now  {runtime.now.isoformat()}")
        blocked = runtime.blocked() if isinstance(runtime, ev.LocalRuntime) else {}
        for execution_id, error in blocked.items():
            lines.append(f"blocked      {execution_id}: {error}")
        if self.host.server_url:
            lines.append(f"serving      {self.host.server_url}")
        for line in self.recent_errors.lines():
            lines.append(f"error        {line}")
        if self.pump.last_error:
            lines.append(f"widgets      last refresh error: {self.pump.last_error}")
        _say("\n".join(lines))

    def _verb_executions(self, words: list[str]) -> None:
        parser = self._parser("executions")
        parser.add_argument("--workflow")
        parser.add_argument("--status", type=str.upper, choices=[s.value for s in ExecutionStatus])
        args = parser.parse_args(words)
        table = ExecutionsTable(self.host, self.host.ensure_runtime(), args.workflow, args.status)
        self.pump.add(table)
        display(table.root)

    def _verb_schedules(self, words: list[str]) -> None:
        if words:
            raise UsageError("%eventual schedules takes no arguments")
        table = SchedulesTable(self.host, self.host.ensure_runtime())
        self.pump.add(table)
        display(table.root)

    def _verb_history(self, words: list[str]) -> None:
        parser = self._parser("history")
        parser.add_argument("id")
        args = parser.parse_args(words)
        runtime = self.host.ensure_runtime()
        history = self.host.call(runtime.get_execution_history(args.id))
        display(HTML(f"<div class='ev-tl eventual-history'><style>{CSS}</style>{history_table(history)}</div>"))

    def _verb_timeline(self, words: list[str]) -> None:
        """The execution's timeline, history and logs as they are now (a picture; the widget is the live one)."""
        parser = self._parser("timeline")
        parser.add_argument("id")
        args = parser.parse_args(words)
        runtime = self.host.ensure_runtime()
        snapshot = self.host.call(read_snapshot(runtime, args.id))
        timeline = snapshot.timeline()
        display(
            HTML(
                f"<div class='eventual-timeline-view'>{render_fragment(timeline, snapshot.history, snapshot.logs)}</div>"
            )
        )

    def _verb_logs(self, words: list[str]) -> None:
        parser = self._parser("logs")
        parser.add_argument("id")
        args = parser.parse_args(words)
        runtime = self.host.ensure_runtime()
        entries = self.host.call(runtime.get_execution_logs(args.id))
        if not entries:
            _say(f"no logs for {args.id}")
        for entry in entries:
            _say(f"{entry.time.isoformat(timespec='milliseconds')} [{entry.source}] {entry.message}")

    def _verb_entities(self, words: list[str]) -> None:
        """The served entities with their entry counts; `NAME KEY [SORT]` shows one entry (value and version)."""
        parser = self._parser("entities")
        parser.add_argument("name", nargs="?")
        parser.add_argument("key", nargs="?")
        parser.add_argument("sort", nargs="?")
        args = parser.parse_args(words)
        runtime = self.host.ensure_runtime()
        if args.name is None:
            entities = self.host.call(runtime.list_entities())
            if not entities:
                _say(
                    f"service '{current_service().name}' has no entities: define one with ev.entity(NAME, Model, key=...)"
                )
            for entity in entities:
                count = "entries not counted" if entity.count is None else f"{entity.count} entries"
                _say(f"{entity.name:<24} {entity.model} by {', '.join(entity.key)}: {count}")
            return
        if args.key is None:
            raise UsageError("%eventual entities NAME KEY [SORT]: name the entry's key (a two-part key: KEY SORT)")
        try:
            record = self.host.call(
                runtime.get_entity(args.name, args.key if args.sort is None else (args.key, args.sort))
            )
        except ev.EventualError as exc:
            raise UsageError(f"%eventual entities: {exc.message}") from None
        _say(
            f"{record.entity} {record.key!r} version {record.version}\n{json.dumps(record.value, indent=2, ensure_ascii=False)}"
        )

    def _verb_serve(self, words: list[str]) -> str:
        """Serve and return the URL, so `url = %eventual serve --port 0` gets the port the system picked."""
        parser = self._parser("serve")
        parser.add_argument("--port", type=int, default=3111, help="0 picks a free port")
        parser.add_argument("--host", default="127.0.0.1")
        args = parser.parse_args(words)
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            raise UsageError("%eventual serve listens on 127.0.0.1 only; use `eventual-nb serve` to listen wider")
        try:
            url = self.host.serve(args.host, args.port)
        except ev.EventualError as exc:
            raise UsageError(f"%eventual serve: {exc}") from None
        _say(f"serving {url} (API docs at {url}/docs); `%eventual stop` stops it")
        return url

    def _verb_stop(self, words: list[str]) -> None:
        if words:
            raise UsageError("%eventual stop takes no arguments")
        self.host.stop_runtime("%eventual stop")
        _say("stopped the server and the runtime; executions resume when the runtime starts again")

    def _verb_export(self, words: list[str]) -> None:
        """Export the notebook this kernel runs (its saved file) as a service package into DIR."""
        parser = self._parser("export")
        parser.add_argument("dir")
        parser.add_argument("--zip", action="store_true", help="also build lambda.zip")
        parser.add_argument("--force", action="store_true", help="write into DIR even if it is not an earlier export")
        parser.add_argument("--notebook", help="the notebook file (default: the one this kernel was started for)")
        args = parser.parse_args(words)
        notebook = Path(args.notebook) if args.notebook else self._notebook_path()
        from eventual_nb.cli import export_service

        try:
            # The definitions are read from the saved file and imported in a child process, so exporting
            # never touches the definitions this kernel's executions run on.
            result = export_service(notebook, args.dir, zip=args.zip, force=args.force)
        except ev.EventualError as exc:
            raise UsageError(f"%eventual export: {exc.message}") from None
        _say(
            f"exported service '{result.manifest['name']}' from {notebook.name} (as saved) to {result.directory}: "
            + ", ".join(result.files)
        )

    def _notebook_path(self) -> Path:
        """The notebook file of this kernel: Jupyter tells the kernel through `__session__` (ipykernel sets it
        from JPY_SESSION_NAME, which jupyter_server passes); VS Code sets `__vsc_ipynb_file__`."""
        candidates = [
            self.user_ns.get("__session__"),
            os.environ.get("JPY_SESSION_NAME"),
            self.user_ns.get("__vsc_ipynb_file__"),
        ]
        for candidate in candidates:
            if isinstance(candidate, str) and candidate.endswith(".ipynb"):
                path = Path(candidate)
                if path.is_file():
                    return path
                if (Path.cwd() / path.name).is_file() and not path.is_absolute():
                    return Path.cwd() / path.name
        raise UsageError(
            "%eventual export: this kernel does not know which notebook file it runs (Jupyter did not say); "
            "pass it: %eventual export DIR --notebook PATH"
        )

    def _verb_advance(self, words: list[str]) -> None:
        parser = self._parser("advance")
        parser.add_argument("duration", type=magic_syntax.duration)
        args = parser.parse_args(words)
        environment = self.host.runtime
        if not isinstance(environment, TestEnvironment):
            raise UsageError("%eventual advance needs the test runtime: run `%eventual runtime test` first")
        self.host.call(environment.advance(parse_duration(args.duration)))
        _say(f"virtual clock at {environment.now.isoformat()}")

    # --------------------------------------------------------------------------------------- display

    def show_handle(self, handle: ExecutionHandle) -> None:
        """How an `ExecutionHandle` displays in the kernel: its live execution widget."""
        runtime = handle._runtime if handle._runtime is not None else self.host.ensure_runtime()
        view = ExecutionView(self.host, handle.id, runtime, _signals_of(handle.workflow))
        self.pump.add(view)
        display(view.root)


def _stack_of(runtime: RuntimeBase) -> str:
    """Where an AwsRuntime serves from (" on stack S in R"); nothing for a runtime of this process."""
    from eventual_nb.aws import AwsRuntime  # boto3-free; already loaded when the host runs one

    return f" on stack {runtime.stack} in {runtime.region}" if isinstance(runtime, AwsRuntime) else ""


def _signals_of(workflow: str) -> dict[str, Any]:
    """The signals a workflow's service declares, by name (what the widget's Send form offers)."""
    from eventual_nb.workflows import find_workflow

    definition = find_workflow(workflow)
    service = definition.service if definition is not None and definition.service is not None else current_service()
    return dict(service.signals)


VERBS = (
    "service",
    "runtime",
    "status",
    "executions",
    "schedules",
    "entities",
    "history",
    "timeline",
    "logs",
    "serve",
    "stop",
    "export",
    "advance",
)
VERBS_HELP = """%eventual VERB
  service NAME                          use (create) service NAME; its database is .eventual/NAME.db
  runtime local [--path P] [--durability full|normal|off] [--bus B]
  runtime test [--start ISO]            virtual clock (see `advance`)
  runtime aws --stack NAME [--region R] [--endpoint-url URL]
                                        a deployed stack (eventual-nb deploy); its functions run the code
  status                                service, runtime, executions in progress, blocked ones
  executions [--workflow W] [--status S]  live table
  schedules                             live table of schedules: next fire, last run, pause/resume/trigger
  entities [NAME KEY [SORT]]            the service's entities, or one entry's value and version
  history ID | logs ID                  an execution's history / captured output
  timeline ID                           an execution's timeline as a picture, its history and logs
  serve [--port 3111]                   serve the notebook's API from the kernel (127.0.0.1)
  stop                                  stop the server and the runtime
  advance DURATION                      move the test runtime's clock, e.g. 1d
  export DIR [--zip] [--force] [--notebook PATH]
                                        write this notebook's service as a package (eventual-nb export)"""
