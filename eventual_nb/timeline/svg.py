"""The timeline as SVG and HTML: one renderer for the notebook widget, `%eventual timeline` and the HTML export.

Plain markup only, no script: the notebook shows it in an ipywidgets `HTML` widget (JupyterLab and
Notebook 7 alike, no frontend extension), and the exported page works offline and in any browser.
Hovering a bar shows its details (CSS `:hover`), clicking keeps them shown (`:focus`); long payloads in
the history table open with `<details>`. Colours come from JupyterLab's theme variables (`--jp-*`) with
light fallbacks, so the picture follows the lab's light or dark theme, and the exported page follows the
reader's `prefers-color-scheme`.

Rows are drawn bottom-up so that a bar's details, shown below it, paint over the rows beneath it.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from eventual_nb.durations import format_duration
from eventual_nb.engine.history import HistoryEvent, LogEntry, describe_event, event_fields
from eventual_nb.timeline.model import (
    OUTCOME_ORDER,
    Axis,
    Instant,
    Span,
    Timeline,
    duration_of,
    elapsed,
    rough_duration,
)

WIDTH = 960
LABEL_WIDTH = 200
RIGHT_PAD = 16
AXIS_HEIGHT = 30
LANE_HEIGHT = 22
BAR_HEIGHT = 14
#: a bar's details: at most this many lines of this many characters
TIP_LINES = 7
TIP_CHARS = 100
TIP_LINE_HEIGHT = 14
#: width of one character of the details' monospace font (11 px), to size their box
CHAR_WIDTH = 6.7
#: bars narrower than this many pixels are widened to it; runs of them are drawn as one bar
MIN_BAR = 2.0
#: bars narrower than this get an invisible target this wide for the pointer
HIT_WIDTH = 8
#: rows drawn at most (the history table below has everything)
MAX_ROWS = 40
#: history rows the notebook widget shows (the HTML export and `%eventual timeline` show all)
WIDGET_HISTORY_ROWS = 500
#: histories up to this long are shown open in the page and `%eventual timeline` (longer ones: a click away)
HISTORY_OPEN = 1000
#: a payload longer than this is cut in the history table, the rest behind "more"
SHORT_PAYLOAD = 100
#: payloads longer than this are cut even when opened (the CLI's `history --json` has them whole)
LONG_PAYLOAD = 20000

LABELS = {
    "failed": "failed",
    "timed_out": "timed out",
    "cancelled": "cancelled",
    "running": "running",
    "waiting": "waiting",
    "backoff": "retry backoff",
    "received": "signal received",
    "fired": "timer fired",
    "succeeded": "succeeded",
}

CSS = """
.ev-tl { --ev-fg: var(--jp-ui-font-color1, #1f2328); --ev-muted: var(--jp-ui-font-color2, #59636e);
  --ev-bg: var(--jp-layout-color1, #ffffff); --ev-band: var(--jp-layout-color2, #f3f4f6);
  --ev-line: var(--jp-border-color2, #d1d9e0); --ev-tip: var(--jp-layout-color0, #ffffff);
  --ev-ok: var(--jp-success-color1, #2e7d32); --ev-bad: var(--jp-error-color1, #d32f2f);
  --ev-run: var(--jp-brand-color1, #1976d2); --ev-wait: var(--jp-warn-color1, #f57c00);
  --ev-late: #e8710a; --ev-off: #8c959f; --ev-info: #00897b; --ev-signal: #8e24aa;
  color: var(--ev-fg); font-family: var(--jp-ui-font-family, system-ui, sans-serif); font-size: 12px; }
.ev-tl svg { max-width: 100%; height: auto; display: block; }
.ev-tl svg text { fill: var(--ev-fg); font-size: 11px; }
.ev-tl .ev-muted, .ev-tl svg .ev-muted { fill: var(--ev-muted); color: var(--ev-muted); }
.ev-tl .ev-band { fill: var(--ev-band); }
.ev-tl .ev-grid { stroke: var(--ev-line); stroke-width: 1; }
.ev-tl .ev-break { fill: var(--ev-band); stroke: var(--ev-muted); stroke-dasharray: 3 3; pointer-events: none; }
.ev-tl .ev-now { stroke: var(--ev-run); stroke-width: 1.5; stroke-dasharray: 4 2; }
.ev-tl .ev-bar { stroke-width: 1.2; }
.ev-tl .ev-planned { fill: none; stroke-width: 1; stroke-dasharray: 3 2; }
.ev-tl .ev-o-succeeded .ev-bar { fill: var(--ev-ok); stroke: var(--ev-ok); }
.ev-tl .ev-o-failed .ev-bar { fill: var(--ev-bad); stroke: var(--ev-bad); }
.ev-tl .ev-o-timed_out .ev-bar { fill: var(--ev-late); stroke: var(--ev-late); }
.ev-tl .ev-o-cancelled .ev-bar { fill: var(--ev-off); stroke: var(--ev-off); fill-opacity: .45; }
.ev-tl .ev-o-running .ev-bar { fill: var(--ev-run); stroke: var(--ev-run); }
.ev-tl .ev-o-waiting .ev-bar { fill: var(--ev-wait); stroke: var(--ev-wait); fill-opacity: .35; }
.ev-tl .ev-o-backoff .ev-bar { fill: var(--ev-off); stroke: var(--ev-off); fill-opacity: .2;
  stroke-dasharray: 2 2; }
.ev-tl .ev-o-received .ev-bar { fill: var(--ev-signal); stroke: var(--ev-signal); fill-opacity: .55; }
.ev-tl .ev-o-fired .ev-bar { fill: var(--ev-info); stroke: var(--ev-info); fill-opacity: .55; }
.ev-tl .ev-k-workflow .ev-bar { fill-opacity: .18; }
.ev-tl .ev-planned { stroke: var(--ev-wait); }
.ev-tl .ev-mark { stroke: var(--ev-bg); stroke-width: 1; }
.ev-tl .ev-k-signal .ev-mark, .ev-tl .ev-k-sent .ev-mark { fill: var(--ev-signal); }
.ev-tl .ev-k-events .ev-mark { fill: var(--ev-info); }
.ev-tl .ev-k-patch .ev-mark { fill: var(--ev-muted); }
.ev-tl .ev-k-cancel .ev-mark { fill: var(--ev-bad); }
.ev-tl .ev-retry { stroke: var(--ev-bad); stroke-width: 2; }
.ev-tl .ev-hit { fill: transparent; }
.ev-tl .ev-bar-label { fill: #ffffff; font-size: 10px; pointer-events: none; }
.ev-tl .ev-k-workflow .ev-bar-label, .ev-tl .ev-o-waiting .ev-bar-label, .ev-tl .ev-o-backoff .ev-bar-label,
  .ev-tl .ev-o-cancelled .ev-bar-label, .ev-tl .ev-o-received .ev-bar-label,
  .ev-tl .ev-o-fired .ev-bar-label { fill: var(--ev-fg); }
.ev-tl .ev-item { cursor: pointer; outline: none; }
.ev-tl .ev-item:hover .ev-bar, .ev-tl .ev-item:focus .ev-bar, .ev-tl .ev-item:hover .ev-mark,
  .ev-tl .ev-item:focus .ev-mark { stroke: var(--ev-fg); stroke-width: 2; }
.ev-tl .ev-tip { display: none; pointer-events: none; }
.ev-tl .ev-item:hover .ev-tip, .ev-tl .ev-item:focus .ev-tip { display: inline; }
.ev-tl .ev-tipbox { display: inline-block; white-space: pre; box-sizing: border-box; max-width: 100%;
  overflow: hidden; font-family: var(--jp-code-font-family, ui-monospace, monospace); font-size: 11px;
  line-height: 14px; color: var(--ev-fg); background: var(--ev-tip); border: 1px solid var(--ev-muted);
  border-radius: 3px; padding: 3px 6px; }
.ev-tl .ev-legend rect { stroke-width: 1; }
.ev-tl .ev-waiting { margin: 2px 0 6px; }
.ev-tl table.ev-history, .ev-tl table.ev-logs { border-collapse: collapse; font-size: 12px; }
.ev-tl table.ev-history th, .ev-tl table.ev-logs th { text-align: left; color: var(--ev-muted);
  border-bottom: 1px solid var(--ev-line); padding: 2px 8px; font-weight: normal; }
.ev-tl table.ev-history td, .ev-tl table.ev-logs td { padding: 1px 8px; vertical-align: top;
  border-bottom: 1px solid var(--ev-band); }
.ev-tl table.ev-history code, .ev-tl table.ev-logs td.ev-message, .ev-tl pre {
  font-family: var(--jp-code-font-family, ui-monospace, monospace); font-size: 11.5px; }
.ev-tl pre { margin: 2px 0; white-space: pre-wrap; word-break: break-all; max-height: 320px; overflow: auto; }
.ev-tl details > summary { cursor: pointer; }
.ev-tl .ev-type { white-space: nowrap; }
.ev-tl table.ev-history i { font-style: normal; color: var(--ev-muted); }
.ev-tl .ev-bad-text { color: var(--ev-bad); }
.ev-tl h4 { margin: 10px 0 4px; font-size: 13px; }
.ev-tl summary h4 { display: inline; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(value)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


# ------------------------------------------------------------------------------------------------ details


def span_lines(span: Span, timeline: Timeline) -> list[str]:
    """What a bar's details say, one line each: what it is, how it ended and when, then its payloads."""
    head = {
        "workflow": span.label,
        "activity": f"activity {span.label}",
        "attempt": f"activity {span.row.removeprefix('activity ')} · {span.label}",
        "backoff": f"activity {span.row.removeprefix('activity ')} · {span.label}",
        "async": f"activity {span.row.removeprefix('activity ')} · {span.label}",
        "timer": "timer",
        "child": f"child workflow {span.label}",
        "signal": span.label,
        "condition": "condition",
    }.get(span.kind, span.label)
    if span.seq is not None:
        head += f" · seq {span.seq}"
    lines = [head]
    took = duration_of(span, timeline.now)
    when = f"{elapsed(timeline, span.start)} → " + (elapsed(timeline, span.end) if span.end is not None else "now")
    lines.append(f"{LABELS.get(span.outcome, span.outcome)} · {when}" + (f" ({format_duration(took)})" if took else ""))
    if span.planned_end is not None:
        lines.append(f"due {elapsed(timeline, span.planned_end)} ({span.planned_end.isoformat(timespec='seconds')})")
    for key, value in span.details.items():
        if key == "message" and "error" in span.details:
            continue
        if key == "error":
            message = span.details.get("message")
            lines.append(f"error: {value}: {message}" if message else f"error: {value}")
        elif key == "attempt":
            continue
        else:
            lines.append(f"{key}: {value if isinstance(value, str) and key not in _PAYLOADS else _json(value)}")
    return [_cut(line, TIP_CHARS) for line in lines[:TIP_LINES]]


_PAYLOADS = {"input", "result", "payload", "events"}


def instant_lines(instant: Instant, timeline: Timeline) -> list[str]:
    lines = [instant.label, f"{elapsed(timeline, instant.time)} ({instant.time.isoformat(timespec='milliseconds')})"]
    for key, value in instant.details.items():
        if value is None and key in ("seq", "id"):
            continue
        lines.append(f"{key}: {value if isinstance(value, str) and key not in _PAYLOADS else _json(value)}")
    return [_cut(line, TIP_CHARS) for line in lines[:TIP_LINES]]


def _tip(frame: _Frame, lines: list[str], x: float, y: float) -> str:
    """A bar's details box (shown on hover and focus): one HTML block in a `foreignObject`, far lighter for
    the browser than a text element per line when a picture holds hundreds of bars."""
    right = frame.width - 4
    width = min(max(len(line) for line in lines) * CHAR_WIDTH + 16, right - 8)
    height = len(lines) * TIP_LINE_HEIGHT + 10
    left = max(4.0, min(x, right - width))
    frame.lowest = max(frame.lowest, y + height + 4)
    head, *rest = lines
    body = "\n".join(_e(line) for line in rest)
    return (
        f'<g class="ev-tip"><foreignObject x="{_num(left)}" y="{_num(y)}" width="{_num(width)}" '
        f'height="{height}"><div class="ev-tipbox"><b>{_e(head)}</b>\n{body}</div></foreignObject></g>'
    )


# ------------------------------------------------------------------------------------------------- layout


class _Frame:
    """Pixel positions of a timeline: rows (top-down), lanes, the plot's x range."""

    def __init__(self, timeline: Timeline, width: int, max_rows: int) -> None:
        self.timeline = timeline
        self.width = width
        self.plot_left = LABEL_WIDTH
        self.plot_right = width - RIGHT_PAD
        rows = timeline.rows[:max_rows]
        self.hidden_rows = len(timeline.rows) - len(rows)
        self.rows = rows
        self.row_top: dict[str, float] = {}
        top = float(AXIS_HEIGHT)
        for row in rows:
            self.row_top[row.key] = top
            top += row.lanes * LANE_HEIGHT
        self.rows_bottom = top
        self.legend_y = top + (16 if self.hidden_rows else 0) + 18
        #: the lowest point a details box reaches: the picture is made that tall (`render_svg`)
        self.lowest = self.legend_y + 8
        self.axis = Axis(timeline.start, timeline.last_moment(), timeline.moments())

    def x(self, moment: datetime) -> float:
        return self.plot_left + (self.plot_right - self.plot_left) * self.axis.x(moment)

    def lane_top(self, row: str, lane: int) -> float | None:
        top = self.row_top.get(row)
        return None if top is None else top + lane * LANE_HEIGHT


def _bars(timeline: Timeline) -> Iterable[Span]:
    """What is drawn as a bar: each span, or its parts when it has them."""
    for span in timeline.spans:
        if span.parts:
            yield from span.parts
        else:
            yield span


def _extent(frame: _Frame, span: Span) -> tuple[float, float, float | None]:
    """(left, right, planned right) of a span's bar in pixels; open spans reach `now`."""
    timeline = frame.timeline
    end = span.end or timeline.now or timeline.end
    left, right = frame.x(span.start), frame.x(end)
    planned = frame.x(span.planned_end) if span.end is None and span.planned_end is not None else None
    return left, max(right, left + MIN_BAR), planned


# ------------------------------------------------------------------------------------------------- render


def render_svg(timeline: Timeline, *, width: int = WIDTH, max_rows: int = MAX_ROWS) -> str:
    """The timeline as one `<svg>` (for an `.ev-tl` container, whose CSS is `CSS`)."""
    frame = _Frame(timeline, width, max_rows)
    out: list[str] = []
    _background(frame, out)
    _axis(frame, out)
    groups: dict[tuple[str, int], list[str]] = {}
    _draw_bars(frame, groups)
    _draw_instants(frame, groups)
    _legend(frame, out)
    for row in reversed(frame.rows):  # bottom-up: a bar's details paint over the rows below it
        for lane in reversed(range(row.lanes)):
            out.extend(groups.get((row.key, lane), ()))
    height = int(frame.lowest)  # room below the last row for its details
    label = _e(timeline.execution_id or timeline.workflow)
    head = (
        f'<svg class="ev-timeline-svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="timeline of {label}">'
    )
    return head + "".join(out) + "</svg>"


def _background(frame: _Frame, out: list[str]) -> None:
    for index, row in enumerate(frame.rows):
        top = frame.row_top[row.key]
        height = row.lanes * LANE_HEIGHT
        if index % 2:
            out.append(f'<rect class="ev-band" x="0" y="{_num(top)}" width="{frame.width}" height="{height}"/>')
        label = row.label + (f" (+{row.overflow} overlapping)" if row.overflow else "")
        out.append(
            f'<text class="ev-row-label" x="6" y="{_num(top + LANE_HEIGHT / 2 + 4)}">'
            f"<title>{_e(label)}</title>{_e(_cut(label, 30))}</text>"
        )
    if frame.hidden_rows:
        out.append(
            f'<text class="ev-muted" x="6" y="{_num(frame.rows_bottom + 12)}">… {frame.hidden_rows} more rows '
            "(the history below has every event)</text>"
        )


def _axis(frame: _Frame, out: list[str]) -> None:
    top, bottom = AXIS_HEIGHT - 6, frame.rows_bottom
    for left, right, seconds in frame.axis.breaks:
        x0 = frame.plot_left + (frame.plot_right - frame.plot_left) * left
        x1 = frame.plot_left + (frame.plot_right - frame.plot_left) * right
        middle = (x0 + x1) / 2
        out.append(
            f'<g class="ev-axis-break"><rect class="ev-break" x="{_num(x0)}" y="{top}" width="{_num(max(x1 - x0, 1))}" '
            f'height="{_num(bottom - top)}"/><text class="ev-muted" x="{_num(middle)}" y="{top - 4}" '
            f'text-anchor="middle">≈ {_e(rough_duration(seconds))}</text></g>'
        )
    in_break = [(left, right) for left, right, _ in frame.axis.breaks]
    shown: list[float] = []
    for fraction, label in frame.axis.ticks(6):
        if any(left < fraction < right for left, right in in_break):
            continue
        x = frame.plot_left + (frame.plot_right - frame.plot_left) * fraction
        if any(abs(x - other) < 60 for other in shown):
            continue
        shown.append(x)
        anchor = "start" if fraction == 0 else ("end" if fraction == 1 else "middle")
        out.append(
            f'<line class="ev-grid" x1="{_num(x)}" y1="{top}" x2="{_num(x)}" y2="{_num(bottom)}"/>'
            f'<text class="ev-muted" x="{_num(x)}" y="{top - 4}" '
            f'text-anchor="{anchor}">{_e(label)}</text>'
        )
    now = frame.timeline.now
    if now is not None:
        x = frame.x(now)
        out.append(
            f'<line class="ev-now" x1="{_num(x)}" y1="{top}" x2="{_num(x)}" y2="{_num(bottom)}"/>'
            f'<text class="ev-now-label" x="{_num(x - 3)}" y="{_num(bottom + 11)}" text-anchor="end">now</text>'
        )


def _attributes(kind: str, outcome: str, label: str, row: str, seq: int | None, extra: str = "") -> str:
    seq_attribute = "" if seq is None else f' data-seq="{seq}"'
    return (
        f'class="ev-item ev-k-{kind} ev-o-{outcome}" tabindex="0" data-kind="{kind}" data-outcome="{outcome}" '
        f'data-label="{_e(label)}" data-row="{_e(row)}"{seq_attribute}{extra}'
    )


def _draw_bars(frame: _Frame, groups: dict[tuple[str, int], list[str]]) -> None:
    timeline = frame.timeline
    by_lane: dict[tuple[str, int], list[tuple[float, float, float | None, Span]]] = {}
    for span in _bars(timeline):
        if span.row not in frame.row_top:
            continue
        left, right, planned = _extent(frame, span)
        by_lane.setdefault((span.row, span.lane), []).append((left, right, planned, span))
    for key, bars in by_lane.items():
        top = frame.lane_top(*key)
        assert top is not None
        bars.sort(key=lambda bar: bar[0])
        for run in _runs(bars):
            if len(run) == 1:
                groups.setdefault(key, []).append(_bar(frame, top, *run[0]))
            else:
                groups.setdefault(key, []).append(_cluster(frame, top, run))


def _runs(bars: list[tuple[float, float, float | None, Span]]) -> list[list[tuple[float, float, float | None, Span]]]:
    """Consecutive bars too narrow to tell apart (a loop of quick calls) become one run, drawn as one bar."""
    runs: list[list[tuple[float, float, float | None, Span]]] = []
    for bar in bars:
        left, right, _, _ = bar
        narrow = right - left <= MIN_BAR + 0.01
        if (
            runs
            and narrow
            and len(runs[-1])
            and runs[-1][-1][1] - runs[-1][-1][0] <= MIN_BAR + 0.01
            and left - runs[-1][-1][1] < 1.0
        ):
            runs[-1].append(bar)
            continue
        runs.append([bar])
    return runs


def _bar(frame: _Frame, top: float, left: float, right: float, planned: float | None, span: Span) -> str:
    y = top + (LANE_HEIGHT - BAR_HEIGHT) / 2
    parts = [f"<g {_attributes(span.kind, span.outcome, span.label, span.row, span.seq)}>"]
    parts.append(
        f'<rect class="ev-bar" x="{_num(left)}" y="{_num(y)}" width="{_num(right - left)}" height="{BAR_HEIGHT}" '
        'rx="2"/>'
    )
    if right - left < HIT_WIDTH:  # a narrow bar is still easy to point at
        middle = (left + right) / 2
        parts.append(
            f'<rect class="ev-hit" x="{_num(middle - HIT_WIDTH / 2)}" y="{_num(y)}" width="{HIT_WIDTH}" '
            f'height="{BAR_HEIGHT}"/>'
        )
    if span.kind == "attempt" and (span.attempt or 1) > 1:  # a retry: marked where the attempt began
        parts.append(
            f'<line class="ev-retry" x1="{_num(left)}" y1="{_num(y - 2)}" x2="{_num(left)}" '
            f'y2="{_num(y + BAR_HEIGHT + 2)}"/>'
        )
    if planned is not None and planned > right:
        parts.append(
            f'<rect class="ev-planned" x="{_num(right)}" y="{_num(y)}" width="{_num(planned - right)}" '
            f'height="{BAR_HEIGHT}" rx="2"/>'
        )
    text = span.label if span.kind != "workflow" else f"{span.label} · {frame.timeline.status}"
    if (right - left) > len(text) * 6.0 + 8:
        parts.append(f'<text class="ev-bar-label" x="{_num(left + 4)}" y="{_num(y + 10.5)}">{_e(text)}</text>')
    parts.append(_tip(frame, span_lines(span, frame.timeline), left, top + LANE_HEIGHT))
    parts.append("</g>")
    return "".join(parts)


def _cluster(frame: _Frame, top: float, run: list[tuple[float, float, float | None, Span]]) -> str:
    spans = [span for _, _, _, span in run]
    outcome = min((span.outcome for span in spans), key=lambda outcome: OUTCOME_ORDER.get(outcome, 99))
    counts: dict[str, int] = {}
    for span in spans:
        counts[span.outcome] = counts.get(span.outcome, 0) + 1
    seqs = [span.seq for span in spans if span.seq is not None]
    label = f"{len(spans)} × {spans[0].row}"
    first, last = spans[0], spans[-1]
    lines = [
        label + (f" · seq {min(seqs)}–{max(seqs)}" if seqs else ""),
        ", ".join(f"{count} {LABELS.get(name, name)}" for name, count in sorted(counts.items())),
        f"{elapsed(frame.timeline, first.start)} → "
        + (elapsed(frame.timeline, last.end) if last.end is not None else "now"),
        "too close together to draw apart: the history below has each one",
    ]
    left, right = run[0][0], max(bar[1] for bar in run)
    y = top + (LANE_HEIGHT - BAR_HEIGHT) / 2
    count = f' data-count="{len(spans)}"'
    return (
        f"<g {_attributes('cluster', outcome, label, first.row, None, count)}>"
        f'<rect class="ev-bar" x="{_num(left)}" y="{_num(y)}" width="{_num(max(right - left, MIN_BAR))}" '
        f'height="{BAR_HEIGHT}" rx="2"/>'
        + _tip(frame, [_cut(line, TIP_CHARS) for line in lines], left, top + LANE_HEIGHT)
        + "</g>"
    )


def _draw_instants(frame: _Frame, groups: dict[tuple[str, int], list[str]]) -> None:
    for instant in frame.timeline.instants:
        top = frame.lane_top(instant.row, 0)
        if top is None:
            continue
        x, y = frame.x(instant.time), top + LANE_HEIGHT / 2
        size = 5
        diamond = f"M{_num(x)} {_num(y - size)}L{_num(x + size)} {_num(y)}L{_num(x)} {_num(y + size)}L{_num(x - size)} {_num(y)}Z"
        groups.setdefault((instant.row, 0), []).append(
            f"<g {_attributes(instant.kind, 'instant', instant.label, instant.row, instant.details.get('seq'))}>"
            f'<path class="ev-mark" d="{diamond}"/>'
            + _tip(frame, instant_lines(instant, frame.timeline), x - size, top + LANE_HEIGHT)
            + "</g>"
        )


def _legend(frame: _Frame, out: list[str]) -> None:
    used = {span.outcome for span in _bars(frame.timeline)}
    y = frame.legend_y
    x = 6.0
    items = [outcome for outcome in LABELS if outcome in used]
    parts = ['<g class="ev-legend">']
    for outcome in items:
        parts.append(
            f'<g class="ev-o-{outcome}"><rect class="ev-bar" x="{_num(x)}" y="{_num(y - 9)}" width="12" '
            f'height="10" rx="2"/></g><text class="ev-muted" x="{_num(x + 16)}" y="{_num(y)}">{LABELS[outcome]}</text>'
        )
        x += 16 + len(LABELS[outcome]) * 6.2 + 14
    parts.append(
        f'<text class="ev-muted" x="{_num(max(x, frame.plot_left))}" y="{_num(y)}">'
        "hover a bar for its details, click to keep them</text></g>"
    )
    out.append("".join(parts))


# ------------------------------------------------------------------------------------------ sparkline


def render_sparkline(timeline: Timeline, *, width: int = 140, height: int = 14) -> str:
    """A small picture of the timeline for a table cell: every bar on one line, the same colours."""
    if not timeline.spans:
        return ""
    axis = Axis(timeline.start, timeline.last_moment(), timeline.moments())
    parts = [f'<svg class="ev-sparkline" viewBox="0 0 {width} {height}" width="{width}" height="{height}">']
    lanes = 3
    lane_height = (height - 2) / lanes
    rows = {row.key: index for index, row in enumerate(timeline.rows)}
    for span in _bars(timeline):
        end = span.end or timeline.now or timeline.end
        left, right = axis.x(span.start) * width, axis.x(end) * width
        if span.kind == "workflow":
            y, h = 0.0, float(height)
        else:
            y, h = 1 + (rows.get(span.row, 1) - 1) % lanes * lane_height, lane_height - 0.5
        parts.append(
            f'<g class="ev-o-{span.outcome} ev-k-{span.kind}"><rect class="ev-bar" x="{_num(left)}" y="{_num(y)}" '
            f'width="{_num(max(right - left, 1.0))}" height="{_num(h)}"/></g>'
        )
    if timeline.now is not None:
        x = axis.x(timeline.now) * width
        parts.append(f'<line class="ev-now" x1="{_num(x)}" y1="0" x2="{_num(x)}" y2="{height}"/>')
    parts.append("</svg>")
    return "".join(parts)


# ----------------------------------------------------------------------------------------- history, logs


def _payload(value: Any) -> str:
    """A payload in the history table: short ones whole, long ones cut with the rest behind "more"."""
    text = _json(value)
    if len(text) <= SHORT_PAYLOAD:
        return f"<code>{_e(text)}</code>"
    try:
        pretty = json.dumps(value, ensure_ascii=False, default=str, indent=2)
    except (TypeError, ValueError):
        pretty = text
    return (
        f"<details><summary><code>{_e(_cut(text, SHORT_PAYLOAD))}</code></summary>"
        f"<pre>{_e(_cut(pretty, LONG_PAYLOAD))}</pre></details>"
    )


#: the fields whose values are payloads (long ones open with a click)
_PAYLOAD_FIELDS = ("input", "result", "payload", "events")


def _event_cell(event: HistoryEvent) -> str:
    fields = dict(event_fields(event))
    error, message = fields.pop("error", None), fields.pop("message", None)
    parts = [
        f"<i>{name}</i> {_payload(value) if name in _PAYLOAD_FIELDS else _e(value if isinstance(value, str) else _json(value))}"
        for name, value in fields.items()
    ]
    if isinstance(error, str):
        parts.append(f"<span class='ev-bad-text'>{_e(error)}{': ' + _e(message) if message else ''}</span>")
    return " ".join(parts)


def history_table(history: Sequence[HistoryEvent], *, limit: int | None = None) -> str:
    """The history as a table: seq, type, time since the start, and the event's names and payloads (long
    payloads open with a click). With `limit`, only the last `limit` events, saying how many are left out."""
    if not history:
        return "<i>no history yet</i>"
    start = history[0].timestamp
    shown = history if limit is None or len(history) <= limit else history[-limit:]
    rows = [
        "<tr>"
        f"<td>{'' if event.seq is None else event.seq}</td>"
        f"<td class='ev-type'>{event.type}</td>"
        f"<td title='{event.timestamp.isoformat()}'>+{_e(format_duration(event.timestamp - start))}</td>"
        f"<td>{_event_cell(event)}</td>"
        "</tr>"
        for event in shown
    ]

    note = ""
    if len(shown) < len(history):
        note = (
            f"<div class='ev-muted'>the last {len(shown)} of {len(history)} events; "
            "<code>%eventual timeline ID</code> or <code>eventual-nb timeline ID --html FILE</code> shows all</div>"
        )
    return (
        f"{note}<table class='ev-history'><thead><tr><th>seq</th><th>type</th><th>time</th><th>details</th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def logs_table(logs: Sequence[LogEntry]) -> str:
    if not logs:
        return "<i class='ev-muted'>nothing it ran has printed or logged anything</i>"
    rows = "".join(
        f"<tr><td title='{entry.time.isoformat()}'>{entry.time.strftime('%H:%M:%S.%f')[:-3]}</td>"
        f"<td>{_e(entry.source)}</td><td class='ev-message'>{_e(entry.message)}</td></tr>"
        for entry in logs
    )
    return f"<table class='ev-logs'><tr><th>time</th><th>source</th><th>message</th></tr>{rows}</table>"


def waiting_line(timeline: Timeline) -> str:
    if not timeline.waiting:
        return ""
    return f"<div class='ev-waiting'><b>waiting:</b> {_e('; '.join(timeline.waiting))}</div>"


def timeline_html(timeline: Timeline) -> str:
    """The picture with what the execution waits on, styled (the notebook widget's timeline)."""
    return f"<div class='ev-tl'><style>{CSS}</style>{waiting_line(timeline)}{render_svg(timeline)}</div>"


def history_section(history: Sequence[HistoryEvent]) -> str:
    """The history under a heading that opens and closes it, closed when long (`HISTORY_OPEN`).

    A table row costs a browser about ten elements to parse, so a history longer than `HISTORY_OPEN` shows its
    last `HISTORY_OPEN` events as table rows and all of them as plain text lines (one text node: a 10,000-event
    page opens as fast as a 1,000-event one, and still holds every event for a bug report)."""
    if len(history) <= HISTORY_OPEN:
        return (
            f"<details class='ev-history-section' open><summary><h4>History · {len(history)} events</h4></summary>"
            f"{history_table(history)}</details>"
        )
    start = history[0].timestamp
    lines = "\n".join(
        f"{'' if event.seq is None else event.seq}\t{event.type}\t+{format_duration(event.timestamp - start)}"
        f"\t{describe_event(event)}"
        for event in history
    )
    return (
        f"<details class='ev-history-section'><summary><h4>History · {len(history)} events</h4></summary>"
        f"{history_table(history, limit=HISTORY_OPEN)}"
        f"<details class='ev-history-text'><summary>all {len(history)} events as text (seq, type, time, details)"
        f"</summary><pre>{_e(lines)}</pre></details></details>"
    )


def render_fragment(
    timeline: Timeline, history: Sequence[HistoryEvent], logs: Sequence[LogEntry], *, title: bool = True
) -> str:
    """Everything about an execution in one styled block: title, picture, history and logs."""
    heading = ""
    if title:
        heading = (
            f"<h3 style='margin:4px 0'>{_e(timeline.execution_id or timeline.workflow)} "
            f"<span class='ev-muted'>{_e(timeline.status)} · {timeline.events} events · started "
            f"{_e(timeline.start.isoformat(timespec='seconds'))}</span></h3>"
        )
    return (
        f"<div class='ev-tl'><style>{CSS}</style>{heading}{waiting_line(timeline)}{render_svg(timeline)}"
        f"{history_section(history)}<h4>Logs</h4>{logs_table(logs)}</div>"
    )


PAGE_CSS = """
body { margin: 16px; background: var(--ev-page-bg, #ffffff); }
@media (prefers-color-scheme: dark) {
  :root { --ev-page-bg: #111418; --jp-layout-color0: #1b1f24; --jp-layout-color1: #111418;
    --jp-layout-color2: #22272e; --jp-ui-font-color1: #e6edf3; --jp-ui-font-color2: #9198a1;
    --jp-border-color2: #3d444d; }
}
"""


def render_page(timeline: Timeline, history: Sequence[HistoryEvent], logs: Sequence[LogEntry]) -> str:
    """A whole HTML page, self-contained (inline SVG and CSS, no script, no network), for a bug report."""
    name = _e(timeline.execution_id or timeline.workflow)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>timeline of {name}</title><style>{PAGE_CSS}</style></head><body>"
        f"{render_fragment(timeline, history, logs)}</body></html>\n"
    )
