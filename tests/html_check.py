"""Parse an HTML report with the standard library and record what a reader would see."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path


@dataclass
class Page:
    sections: list[str] = field(default_factory=list)  # class of each <section>, in order
    bars: int = 0  # <rect class="bar"> elements of the SVG charts
    tags: set[str] = field(default_factory=set)
    urls: list[str] = field(default_factory=list)  # every src/href/url attribute value
    tables: int = 0
    cells: list[str] = field(default_factory=list)  # text of every <td>


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = Page()
        self._in_td = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.page.tags.add(tag)
        if tag == "section":
            self.page.sections.append(a.get("class") or "")
        if tag == "rect" and a.get("class") == "bar":
            self.page.bars += 1
        if tag == "table":
            self.page.tables += 1
        if tag == "td":
            self._in_td = True
            self.page.cells.append("")
        self.page.urls += [v or "" for k, v in attrs if k in ("src", "href")]

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._in_td = False

    def handle_data(self, data: str) -> None:
        if self._in_td:
            self.page.cells[-1] += data


def parse_report(path: Path) -> Page:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    parser = _Parser()
    parser.feed(text)
    parser.close()
    return parser.page
