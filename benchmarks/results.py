"""Benchmark results: plain numbers with labels and targets, rendered as a rich table or JSON."""

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
        value = self.value
        if isinstance(value, int):
            text = f"{value:,}"
        elif self.unit == "s":
            text = f"{value:.4f}" if value < 1 else f"{value:.3f}"
        elif self.unit == "×":
            text = f"{value:.2f}"
        elif abs(value) >= 1000:
            text = f"{value:,.0f}"
        else:
            text = f"{value:.3g}"
        return f"{text} {self.unit}".rstrip()


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
    console.print(f"[bold]eventual-nb engine benchmarks[/bold]{mode}")
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


def print_notes(console: Console, results: list[Result]) -> None:
    for result in results:
        for note in result.notes:
            console.print(f"[dim]* {result.title}: {note}[/dim]")


def write_json(path: str | Path, env: dict[str, Any], quick: bool, results: list[Result]) -> None:
    document = {
        "environment": env,
        "quick": quick,
        "benchmarks": {result.key: result.to_json() for result in results},
    }
    Path(path).write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
