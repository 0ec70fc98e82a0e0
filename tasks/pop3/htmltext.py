"""A plain-text rendering of an HTML body, for messages that have no text/plain part.

Readable rather than faithful: block elements become line breaks, list items get a dash,
links keep their address, scripts and styles are dropped. Fed in chunks, so a large body
is rendered without holding it in memory.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_BLOCK = {
    "address", "article", "aside", "blockquote", "div", "dl", "dt", "dd", "fieldset",
    "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li",
    "main", "nav", "ol", "p", "pre", "section", "table", "tr", "ul",
}
_SKIP = {"script", "style", "head", "title", "template"}
_SPACES = re.compile(r"[ \t\r\n\f\v]+")


class HTMLToText(HTMLParser):
    """Feed HTML with ``feed``; collect text with ``take`` as you go; ``close`` at the end."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self._out: list[str] = []
        self._skip = 0
        self._pre = 0
        self._href: list[str | None] = []
        self._blank = True  # at the start of a line

    def take(self) -> str:
        text = "".join(self._out)
        self._out.clear()
        return text

    def _emit(self, text: str) -> None:
        if text:
            self._out.append(text)
            self._blank = text.endswith("\n")

    def _newline(self) -> None:
        if not self._blank:
            self._emit("\n")

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP:
            self._skip += 1
        elif tag == "br":
            self._emit("\n")
        elif tag in _BLOCK:
            self._newline()
            if tag == "li":
                self._emit("- ")
                self._blank = False
            elif tag == "pre":
                self._pre += 1
        elif tag in ("td", "th"):
            if not self._blank:
                self._emit("\t")
        if tag == "a":
            self._href.append(dict(attrs).get("href"))
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt and not self._skip:
                self._emit(f"[{alt}]")

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag in _SKIP:
            self._skip -= 1

    def handle_endtag(self, tag):
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK:
            if tag == "pre":
                self._pre = max(0, self._pre - 1)
            self._newline()
        elif tag == "a" and self._href:
            href = self._href.pop()
            if href and href.startswith(("http:", "https:", "mailto:")) and not self._skip:
                self._emit(f" <{href.removeprefix('mailto:')}>")

    def handle_data(self, data):
        if self._skip:
            return
        if not self._pre:
            data = _SPACES.sub(" ", data)
            if self._blank:
                data = data.lstrip(" ")
        self._emit(data)


def render(chunks) -> str:
    """The whole rendering at once, for small bodies and tests."""
    parser = HTMLToText()
    out = []
    for chunk in chunks:
        parser.feed(chunk)
        out.append(parser.take())
    parser.close()
    out.append(parser.take())
    return "".join(out)
