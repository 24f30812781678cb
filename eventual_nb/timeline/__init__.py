"""The execution timeline: one model (`build_timeline`) and the pictures drawn from it.

`eventual_nb.timeline.model` builds the model from what a runtime reports; `eventual_nb.timeline.svg` draws
it as SVG and HTML (the notebook widget, `%eventual timeline`, `eventual-nb timeline --html`), and
`eventual_nb.timeline.terminal` as rich bars in a terminal. Nothing here imports Jupyter, and rich only in
the terminal module.
"""

from __future__ import annotations

from eventual_nb.timeline.model import (
    Axis,
    Instant,
    Row,
    Snapshot,
    Span,
    Timeline,
    build_timeline,
    describe_waiting,
    read_attempt_notes,
    read_snapshot,
    timeline_json,
)

__all__ = [
    "Axis",
    "Instant",
    "Row",
    "Snapshot",
    "Span",
    "Timeline",
    "build_timeline",
    "describe_waiting",
    "read_attempt_notes",
    "read_snapshot",
    "timeline_json",
]
