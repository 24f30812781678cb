"""Read a rendered timeline back: its bars and marks (`.ev-item` groups) with their data attributes and the
text of their details, as a person hovering each one would read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Item:
    """One bar or mark: `kind`, `label`, `outcome`, `row`, `seq` (data-* attributes) and its details' lines."""

    attrs: dict[str, str]
    lines: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.attrs.get("data-kind", "")

    @property
    def label(self) -> str:
        return self.attrs.get("data-label", "")

    @property
    def outcome(self) -> str:
        return self.attrs.get("data-outcome", "")

    @property
    def row(self) -> str:
        return self.attrs.get("data-row", "")

    @property
    def details(self) -> str:
        return "\n".join(self.lines)


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.items: list[Item] = []
        self._depth = 0
        self._item_depth: int | None = None
        self._in_tip = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._depth += 1
        found = {key: value or "" for key, value in attrs}
        if tag == "g" and "ev-item" in found.get("class", "").split():
            self.items.append(Item(found))
            self._item_depth = self._depth
        elif tag == "div" and "ev-tipbox" in found.get("class", "").split() and self._item_depth is not None:
            self._in_tip = True
            self.items[-1].lines.append("")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "div":
            self._in_tip = False
        if self._item_depth is not None and self._depth == self._item_depth and tag == "g":
            self._item_depth = None
        self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._in_tip and self.items:
            self.items[-1].lines[-1] += data

    def close(self) -> None:
        super().close()
        for item in self.items:  # the details box is one block of lines
            item.lines = "\n".join(item.lines).split("\n") if item.lines else []


def items(markup: str) -> list[Item]:
    """Every bar and mark of the timelines in `markup`, in document order."""
    reader = _Reader()
    reader.feed(markup)
    reader.close()
    return reader.items


def bars(markup: str) -> list[Item]:
    """The bars (spans) only, without instants (signals received, events published, patches, cancels)."""
    return [item for item in items(markup) if item.outcome != "instant"]
