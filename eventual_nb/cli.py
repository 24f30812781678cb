"""The ``eventual-nb`` command line (also ``python -m eventual_nb.cli`` and ``python -m eventual_nb``).

The whole verb set from DESIGN §5 is declared here up front so that ``--help``, scripts and tests
can rely on the final shape of the command line while the parts behind it land one issue at a time.
A verb whose part has not landed says which issue brings it and exits with status 2 (the same status
argparse uses for a usage error), rather than pretending to work.

This module imports only the standard library at module level: ``eventual-nb --help`` must stay
fast and must work on a core install. Verbs import what they need (rich, httpx, the runtimes,
``kernel_ext``, ``exporter``) inside their handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import NoReturn

PROG = "eventual-nb"
DEFAULT_URL = "http://127.0.0.1:3111"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3111
STATUSES = ("IN_PROGRESS", "SUCCEEDED", "FAILED", "CANCELLED")

#: Exit status of a verb whose part has not landed yet.
EXIT_NOT_AVAILABLE = 2

Handler = Callable[[argparse.Namespace], int]

# Which issue brings each verb: (issue number, issue title). A verb leaves this table when its
# real handler is wired in ``build_parser``.
_LOCAL_RUNTIME = (3, "Local runtime")
_KERNEL_EXTENSION = (4, "Kernel extension")
_EXPORTER = (5, "Exporter")
_AWS_RUNTIME = (6, "AWS runtime")
_NOTEBOOKS = (7, "Notebooks")

LANDS_WITH: dict[str, tuple[int, str]] = {
    "serve": _LOCAL_RUNTIME,
    "export": _EXPORTER,
    "run": _NOTEBOOKS,
    "test": _NOTEBOOKS,
    "kernel install": _KERNEL_EXTENSION,
    "deploy": _AWS_RUNTIME,
    "destroy": _AWS_RUNTIME,
    "workflows": _LOCAL_RUNTIME,
    "start": _LOCAL_RUNTIME,
    "executions": _LOCAL_RUNTIME,
    "execution": _LOCAL_RUNTIME,
    "history": _LOCAL_RUNTIME,
    "logs": _LOCAL_RUNTIME,
    "signal": _LOCAL_RUNTIME,
    "publish": _LOCAL_RUNTIME,
    "cancel": _LOCAL_RUNTIME,
    "replay": _LOCAL_RUNTIME,
}


def package_version() -> str:
    """Return the installed distribution's version, so ``--version`` matches what pip installed.

    Falls back to the source version when the package runs from a checkout that was never installed.
    """
    from importlib import metadata

    try:
        return metadata.version("eventual-nb")
    except metadata.PackageNotFoundError:
        return "0.1.0"


def not_available(verb: str) -> Handler:
    """Build the handler of a verb whose part has not landed, so it fails loudly and says when it will."""

    def handler(args: argparse.Namespace) -> int:
        issue, title = LANDS_WITH[verb]
        message = f"{PROG} {verb}: not available yet; it lands with issue {issue} ({title})"
        print(message, file=sys.stderr)
        if getattr(args, "json", False):
            # Same shape as the HTTP API's errors, so scripts parse one format.
            print(json.dumps({"error": "NotAvailable", "message": message, "issue": issue}))
        return EXIT_NOT_AVAILABLE

    return handler


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
        parent.add_argument(
            "--url",
            default=DEFAULT_URL,
            metavar="URL",
            help=f"the service to talk to (default: the local server, {DEFAULT_URL})",
        )
        parent.add_argument(
            "--token",
            default=None,
            metavar="TOKEN",
            help="bearer token for the internal routes (needed when the server listens beyond loopback)",
        )
    return parent


def build_parser() -> argparse.ArgumentParser:
    """Declare every verb with its DESIGN §5 flags; a separate function so tests and docs can inspect it."""
    parser = _Parser(
        prog=PROG,
        description="Durable workflows, events and APIs for Python and Jupyter (Eventual's model).",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {package_version()}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)

    plain = [_common(client=False)]
    client = [_common(client=True)]

    def add(name: str, help: str, parents: list[_Parser]) -> _Parser:
        sub = verbs.add_parser(name, help=help, description=help, parents=parents)
        sub.set_defaults(handler=not_available(name))
        return sub

    # --- running and packaging a service ----------------------------------------------------------
    p = add("serve", "serve a service over HTTP with the local runtime", plain)
    p.add_argument("target", metavar="TARGET", help="a .py file, a module, an exported package dir or a notebook")
    p.add_argument("--db", metavar="PATH", help="SQLite database of the local runtime")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"interface to listen on (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")

    p = add("export", "export a notebook as a deployable service package", plain)
    p.add_argument("notebook", metavar="NOTEBOOK")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory to write the package to")
    p.add_argument("--zip", action="store_true", help="also build the reproducible lambda.zip")

    p = add("run", "run a notebook with papermill", plain)
    p.add_argument("notebook", metavar="NOTEBOOK")
    p.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a papermill parameter (repeatable)",
    )

    p = add("test", "run notebooks as tests", plain)
    p.add_argument("paths", nargs="*", metavar="PATHS", help="notebooks or directories (default: notebooks/)")

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
    k.set_defaults(handler=not_available("kernel install"))

    p = add("deploy", "deploy an exported package to AWS", plain)
    p.add_argument("dir", metavar="DIR", help="a directory written by `eventual-nb export`")
    p.add_argument("--stack", required=True, metavar="NAME", help="CloudFormation stack name")
    p.add_argument("--region", metavar="REGION", help="AWS region (default: boto3's)")
    p.add_argument("--endpoint-url", metavar="URL", help="AWS endpoint (an emulator such as moto's server)")

    p = add("destroy", "delete a deployed stack", plain)
    p.add_argument("--stack", required=True, metavar="NAME", help="CloudFormation stack name")
    p.add_argument("--region", metavar="REGION", help="AWS region (default: boto3's)")
    p.add_argument("--endpoint-url", metavar="URL", help="AWS endpoint (an emulator such as moto's server)")

    # --- service-client verbs -----------------------------------------------------------------
    add("workflows", "list the service's workflows", client)

    p = add("start", "start a workflow execution", client)
    p.add_argument("workflow", metavar="WORKFLOW")
    p.add_argument("input", nargs="?", metavar="INPUT", help="the input as JSON")
    p.add_argument("--name", metavar="NAME", help="execution name (makes the start idempotent)")
    p.add_argument("--follow", action="store_true", help="wait for the execution and stream its progress")

    p = add("executions", "list executions", client)
    p.add_argument("--workflow", metavar="WORKFLOW", help="only this workflow's executions")
    p.add_argument(
        "--status",
        action="append",
        type=str.upper,
        choices=STATUSES,
        metavar="STATUS",
        help=f"only executions in this status (repeatable; one of {', '.join(STATUSES)})",
    )

    for name, help in (
        ("execution", "show one execution"),
        ("history", "show an execution's history"),
        ("logs", "show an execution's logs"),
        ("cancel", "cancel an execution"),
        ("replay", "re-run an execution's recorded history against the current code and report divergence"),
    ):
        p = add(name, help, client)
        p.add_argument("id", metavar="ID", help="execution id (<workflow>/<name>)")

    p = add("signal", "send a signal to an execution", client)
    p.add_argument("id", metavar="ID", help="execution id (<workflow>/<name>)")
    p.add_argument("signal", metavar="SIGNAL", help="signal name")
    p.add_argument("payload", nargs="?", metavar="PAYLOAD", help="the payload as JSON")

    p = add("publish", "publish an event", client)
    p.add_argument("event", metavar="EVENT", help="event name")
    p.add_argument("payload", nargs="?", metavar="PAYLOAD", help="the event's fields as JSON")

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
