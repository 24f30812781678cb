"""Benchmark results: plain numbers with labels and targets, rendered as rich tables or JSON.

A `Result` is one system's numbers (the engine benchmarks). A `Comparison` puts several systems side
by side (LocalRuntime against DBOS): one column per system, one row per metric, and a footer for the
settings a reader needs to judge the comparison (durability, fsync cost of the disk).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table


@dataclass
class Metric:
    """One number a benchmark reports.

    `target` is the goal in words (shown in the table); `met` says whether this run met it (None when
    the metric has no target). Targets are informational: nothing fails when one is missed.
    """

    key: str
    label: str
    value: float | int
    unit: str = ""
    target: str | None = None
    met: bool | None = None

    def formatted(self) -> str:
        return format_value(self.value, self.unit)


def format_value(value: float | int, unit: str = "") -> str:
    if isinstance(value, int):
        text = f"{value:,}"
    elif unit == "s":
        text = f"{value:.4f}" if value < 1 else f"{value:.3f}"
    elif unit == "×":
        text = f"{value:.2f}" if value < 100 else f"{value:,.0f}"
    elif abs(value) >= 1000:
        text = f"{value:,.0f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()


@dataclass
class Result:
    """What one benchmark measured: sizes (`params`), numbers (`metrics`) and textual facts (`info`)."""

    key: str
    title: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        key: str,
        label: str,
        value: float | int,
        unit: str = "",
        *,
        target: str | None = None,
        met: bool | None = None,
    ) -> Metric:
        metric = Metric(key, label, value, unit, target, met)
        self.metrics.append(metric)
        return metric

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "params": self.params,
            "results": {metric.key: metric.value for metric in self.metrics},
            "units": {metric.key: metric.unit for metric in self.metrics if metric.unit},
            "targets": {metric.key: metric.target for metric in self.metrics if metric.target},
            "met": {metric.key: metric.met for metric in self.metrics if metric.met is not None},
            "info": self.info,
            "notes": self.notes,
        }


@dataclass
class Row:
    """One metric of a `Comparison`: a value per system (a system without one shows "—")."""

    key: str
    label: str
    values: dict[str, float | int]
    unit: str = ""
    target: str | None = None
    met: bool | None = None


@dataclass
class Comparison:
    """Several systems measured side by side in one run on one machine.

    `systems` maps a system key to its column heading. A system that could not be measured at all
    (for example DBOS when it is not installed) is listed in `unavailable` with the reason, which the
    table shows in its column and the JSON keeps, so a missing number is never silently a zero.
    """

    key: str
    title: str
    systems: dict[str, str]
    params: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: facts printed under the table (durability settings, disk fsync cost)
    footer: list[str] = field(default_factory=list)

    def add(
        self,
        key: str,
        label: str,
        values: dict[str, float | int | None],
        unit: str = "",
        *,
        target: str | None = None,
        met: bool | None = None,
    ) -> Row:
        row = Row(key, label, {k: v for k, v in values.items() if v is not None}, unit, target, met)
        self.rows.append(row)
        return row

    def value(self, system: str, key: str) -> float | int | None:
        for row in self.rows:
            if row.key == key:
                return row.values.get(system)
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "params": self.params,
            "systems": self.systems,
            "results": {
                system: {row.key: row.values[system] for row in self.rows if system in row.values}
                for system in self.systems
            },
            "units": {row.key: row.unit for row in self.rows if row.unit},
            "targets": {row.key: row.target for row in self.rows if row.target},
            "met": {row.key: row.met for row in self.rows if row.met is not None},
            "unavailable": self.unavailable,
            "info": self.info,
            "notes": self.notes,
            "footer": self.footer,
        }


def environment() -> dict[str, Any]:
    """Where the numbers were measured: printed above the table and stored in the JSON."""
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "date": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "executable": sys.executable,
    }


def make_console() -> Console:
    """A console that does not squeeze the table when stdout is not a terminal (`make bench | tee`)."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=132)
    return console


def print_header(console: Console, env: dict[str, Any], quick: bool) -> None:
    mode = " (--quick: small sizes)" if quick else ""
    console.print(f"[bold]eventual-nb benchmarks[/bold]{mode}")
    console.print(f"Python:  {env['python']} ({env['executable']})")
    console.print(f"Machine: {env['platform']}, {env['machine']}, {env['cpus']} CPU(s)")
    console.print(f"Date:    {env['date']}")


def render(results: list[Result]) -> Table:
    table = Table(box=box.SIMPLE_HEAVY, show_lines=False, title="engine (no peer yet; absolute numbers)")
    table.add_column("Benchmark", style="bold", max_width=34)
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    table.add_column("Target", justify="right")
    table.add_column("", justify="center")
    for index, result in enumerate(results):
        if index:
            table.add_section()
        for row, metric in enumerate(result.metrics):
            mark = "" if metric.met is None else ("[green]✓[/green]" if metric.met else "[red]✗ missed[/red]")
            table.add_row(result.title if row == 0 else "", metric.label, metric.formatted(), metric.target or "", mark)
    return table


def render_comparisons(comparisons: list[Comparison]) -> Table:
    """One table for all comparisons, one column per system any of them measured (in order of appearance).

    Each comparison is a section headed by its title, so metric labels keep the width they need.
    """
    systems: dict[str, str] = {}
    for comparison in comparisons:
        for key, label in comparison.systems.items():
            systems.setdefault(key, label)
    table = Table(box=box.SIMPLE_HEAVY, show_lines=False, title="LocalRuntime against DBOS (same machine, same run)")
    table.add_column("Metric", min_width=40, max_width=48)
    for label in systems.values():
        table.add_column(label, justify="right", no_wrap=True)
    table.add_column("Target", justify="right", no_wrap=True)
    table.add_column("", justify="center", no_wrap=True)
    for index, comparison in enumerate(comparisons):
        if index:
            table.add_section()
        table.add_row(f"[bold]{comparison.title}[/bold]", *([""] * (len(systems) + 2)))
        for row in comparison.rows:
            cells = []
            for system in systems:
                if system in row.values:
                    cells.append(format_value(row.values[system], row.unit))
                elif system in comparison.unavailable:
                    cells.append(f"[dim]{comparison.unavailable[system]}[/dim]")
                else:
                    cells.append("—")
            mark = "" if row.met is None else ("[green]✓[/green]" if row.met else "[red]✗ missed[/red]")
            table.add_row(f"  {row.label}", *cells, row.target or "", mark)
    return table


def print_footers(console: Console, comparisons: list[Comparison]) -> None:
    seen: set[str] = set()
    for comparison in comparisons:
        for line in comparison.footer:
            if line not in seen:
                seen.add(line)
                console.print(line, highlight=False)


def print_notes(console: Console, results: list[Result] | list[Comparison] | list[Result | Comparison]) -> None:
    for result in results:
        for note in result.notes:
            console.print(f"[dim]* {result.title}: {note}[/dim]")


def write_json(
    path: str | Path, env: dict[str, Any], quick: bool, results: list[Result] | list[Result | Comparison]
) -> None:
    document = {
        "environment": env,
        "quick": quick,
        "benchmarks": {result.key: result.to_json() for result in results},
    }
    Path(path).write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
