"""The timeline as bars in a terminal (`eventual-nb timeline ID`): the same model and axis as the SVG.

One line per lane of each row: its label, its bars on the shared axis (breaks and all), and what its
latest span did. Colours follow the SVG's; the characters carry the meaning without colour too (`█`
ran or ended, `░` a retry's backoff, `▒` still waiting, `┄` due later, `╳` a failure, `◆` an instant,
`│` now).
"""

from __future__ import annotations

from datetime import datetime

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from eventual_nb.durations import format_duration
from eventual_nb.timeline.model import Axis, Span, Timeline, duration_of, rough_duration
from eventual_nb.timeline.svg import LABELS

STYLES = {
    "succeeded": "green",
    "failed": "red",
    "timed_out": "dark_orange",
    "cancelled": "grey50",
    "running": "blue",
    "waiting": "yellow",
    "backoff": "grey50",
    "received": "magenta",
    "fired": "cyan",
}
CHARACTERS = {"backoff": "░", "waiting": "▒", "failed": "╳", "timed_out": "╳"}
#: narrowest bar area, in columns
MIN_PLOT = 30
LABEL_COLUMNS = 24
SUMMARY_COLUMNS = 34


class _Line:
    """One line of cells, each a character and a style, turned into rich `Text` at the end."""

    def __init__(self, width: int) -> None:
        self.chars = [" "] * width
        self.styles: list[str] = [""] * width

    def put(self, index: int, char: str, style: str = "") -> None:
        if 0 <= index < len(self.chars):
            self.chars[index], self.styles[index] = char, style

    def text(self, style: str = "") -> Text:
        text = Text("".join(self.chars), style=style)
        for index, cell_style in enumerate(self.styles):
            if cell_style:
                text.stylize(cell_style, index, index + 1)
        return text


class _Grid:
    def __init__(self, timeline: Timeline, width: int) -> None:
        self.timeline = timeline
        self.width = width
        self.axis = Axis(timeline.start, timeline.last_moment(), timeline.moments())

    def column(self, moment: datetime) -> int:
        return min(self.width - 1, int(self.axis.x(moment) * self.width))


def render_terminal(timeline: Timeline, width: int = 120) -> RenderableType:
    """Everything for `Console.print`: a heading, the axis and one line per lane."""
    grid = _Grid(timeline, max(MIN_PLOT, width - LABEL_COLUMNS - SUMMARY_COLUMNS - 4))
    heading = Text()
    heading.append(timeline.execution_id or timeline.workflow, style="bold")
    heading.append(f"  {timeline.status} · {timeline.events} events · started {timeline.start.isoformat()}")
    if timeline.waiting:
        heading.append("\nwaiting: ", style="bold")
        heading.append("; ".join(timeline.waiting))

    table = Table(show_header=False, box=None, pad_edge=False, padding=(0, 1))
    table.add_column(no_wrap=True, width=LABEL_COLUMNS, overflow="ellipsis")
    table.add_column(no_wrap=True, width=grid.width)
    table.add_column(no_wrap=True, overflow="ellipsis")
    table.add_row(Text(""), _axis_line(grid), Text(""))
    lanes: dict[tuple[str, int], list[Span]] = {}
    for span in timeline.spans:
        for bar in span.parts or [span]:
            lanes.setdefault((bar.row, bar.lane), []).append(bar)
    for row in timeline.rows:
        for lane in range(row.lanes):
            spans = lanes.get((row.key, lane), [])
            label = row.label if lane == 0 else ""
            if lane == 0 and row.overflow:
                label += f" (+{row.overflow})"
            line = _lane(grid, spans)
            if lane == 0:
                for instant in timeline.instants:
                    if instant.row == row.key:
                        line.put(
                            grid.column(instant.time), "◆", "bold magenta" if instant.kind == "signal" else "bold cyan"
                        )
            table.add_row(Text(label), line.text(), _summary(timeline, spans))
    return Group(heading, table)


def _axis_line(grid: _Grid) -> Text:
    line = _Line(grid.width)
    for left, right, seconds in grid.axis.breaks:
        start, end = int(left * grid.width), max(int(left * grid.width) + 1, int(right * grid.width))
        for index in range(start, end):
            line.put(index, "≈")
        label = rough_duration(seconds)
        middle = max(start, (start + end - len(label)) // 2)
        for offset, char in enumerate(label):
            line.put(middle + offset, char)
    if grid.timeline.now is not None:
        line.put(grid.column(grid.timeline.now), "▼", "bold blue")
    for fraction, label in grid.axis.ticks(4):
        start = int(fraction * grid.width) - (len(label) if fraction >= 1 else 0)
        start = min(max(start, 0), grid.width - len(label))
        if any(char != " " for char in line.chars[max(0, start - 1) : start + len(label) + 1]):
            continue
        for offset, char in enumerate(label):
            line.put(start + offset, char)
    return line.text(style="dim")


def _lane(grid: _Grid, spans: list[Span]) -> _Line:
    line = _Line(grid.width)
    timeline = grid.timeline
    end_of = timeline.now or timeline.end
    # failures last, so a failed attempt stays visible beside its backoff
    for span in sorted(spans, key=lambda s: s.outcome in ("failed", "timed_out")):
        start, stop = grid.column(span.start), grid.column(span.end or end_of)
        for index in range(start, max(stop, start) + 1):
            line.put(index, CHARACTERS.get(span.outcome, "█"), STYLES.get(span.outcome, ""))
        if span.end is None and span.planned_end is not None:
            for index in range(stop + 1, grid.column(span.planned_end) + 1):
                if line.chars[index] == " ":
                    line.put(index, "┄", "yellow")
    if timeline.now is not None and line.chars[grid.column(timeline.now)] == " ":
        line.put(grid.column(timeline.now), "│", "blue")
    return line


def _summary(timeline: Timeline, spans: list[Span]) -> Text:
    """What the lane's latest span did (and how many calls the lane holds)."""
    if not spans:
        return Text("")
    last = max(spans, key=lambda span: span.start)
    took = duration_of(last, timeline.now)
    said = f"{last.label}: {LABELS.get(last.outcome, last.outcome)}"
    if took is not None:
        said += f" {format_duration(took)}"
    calls = {span.seq for span in spans}
    if len(calls) > 1:
        said = f"{len(calls)} calls, last {said}"
    return Text(said, style=STYLES.get(last.outcome, ""))
