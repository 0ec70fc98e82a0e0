"""A plain-text rendering of an HTML body, for messages that have no text/plain part.

Readable rather than faithful: block elements become line breaks, list items get a dash,
links keep their address, scripts and styles are dropped. Fed in chunks, so a large body
is rendered without holding it in memory.
"""

from __future__ import annotations

import re
from html import unescape

_BLOCK = {
    "address", "article", "aside", "blockquote", "div", "dl", "dt", "dd", "fieldset",
    "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li",
    "main", "nav", "ol", "p", "pre", "section", "table", "tr", "ul",
}
_SKIP = {"script", "style", "head", "title", "template"}
_SPACES = re.compile(r"[ \t\r\n\f\v]+")

#: A tag whose ">" is further than this from its "<" is not a tag: the "<" is text.
MAX_TAG = 16 * 1024
# Where markup may start; any other "<" is text.
_MARKUP = re.compile(r"<[a-zA-Z/!?]")
_NAME = re.compile(r"/?([a-zA-Z][^\s/>]*)")
_ATTR = re.compile(r"""([^\s=/>"']+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s>]+))?""")
# Elements whose content is raw text up to their end tag, as in html.parser.
_RAW_END = {"script": re.compile(r"</script", re.I), "style": re.compile(r"</style", re.I)}


class HTMLToText:
    """Feed HTML with ``feed``; collect text with ``take`` as you go; ``close`` at the end.

    Its own tokenizer, not html.parser's: that one rescans an unfinished construct on every
    feed and is quadratic on inputs such as many "<a" or "</". Here every search resumes
    where the last one stopped, and markup is at most MAX_TAG long, so the work is linear.
    """

    def __init__(self):
        self._buf = ""
        self._no_gt = 0  # no ">" in self._buf between the pending "<" and this index
        self._comment = False  # inside <!-- -->
        self._raw: re.Pattern | None = None  # inside <script> or <style>
        self._out: list[str] = []
        self._skip = 0
        self._pre = 0
        self._href: list[str | None] = []
        self._blank = True  # at the start of a line
        #: How often markup longer than MAX_TAG was read as text.
        self.long_markup = 0

    def feed(self, data: str) -> None:
        self._buf += data
        self._parse(final=False)

    def close(self) -> None:
        self._parse(final=True)

    def _parse(self, final: bool) -> None:
        buf, pos = self._buf, 0
        n = len(buf)
        while pos < n:
            if self._comment:
                end = buf.find("-->", pos)
                if end < 0:
                    pos = n if final else max(pos, n - 2)
                    break
                pos, self._comment = end + 3, False
                continue
            if self._raw is not None:
                found = self._raw.search(buf, pos)
                if found is None:
                    pos = n if final else max(pos, n - 8)
                    break
                pos, self._raw = found.start(), None
                continue
            found = _MARKUP.search(buf, pos)
            if found is None:
                cut = n if final else self._text_end(buf, pos)
                self._text(buf[pos:cut])
                pos = cut
                break
            lt = found.start()
            if lt > pos:
                self._text(buf[pos:lt])
                pos = lt
            if buf.startswith("<!--", lt):
                pos, self._comment = lt + 4, True
                continue
            if n - lt < 4 and not final:
                break  # could be the start of "<!--"
            gt = buf.find(">", max(lt + 2, self._no_gt))
            if gt < 0:
                self._no_gt = n
                if final:
                    self._text(buf[lt:])
                    pos = n
                elif n - lt > MAX_TAG:
                    self._text(buf[lt:n - MAX_TAG])  # no ">" can come close enough now
                    self.long_markup += 1
                    pos = n - MAX_TAG
                break
            self._no_gt = gt
            if gt - lt > MAX_TAG:
                self.long_markup += 1
                self._text("<")
                pos = lt + 1
                continue
            self._markup(buf[lt + 1:gt])
            pos = gt + 1
        self._buf = buf[pos:]
        self._no_gt = max(0, self._no_gt - pos)

    @staticmethod
    def _text_end(buf: str, pos: int) -> int:
        """Where text may be cut before more data comes: not inside a character reference
        or right after a "<"."""
        end = len(buf)
        if buf.endswith("<"):
            end -= 1
        amp = buf.rfind("&", max(pos, end - 34), end)
        if amp >= 0 and not re.search(r"[\s;]", buf[amp:end]):
            end = amp
        return end

    def _text(self, raw: str) -> None:
        if raw:
            self.handle_data(unescape(raw))

    def _markup(self, inner: str) -> None:
        if inner[0] in "!?":
            return  # a declaration, processing instruction or bogus comment
        name = _NAME.match(inner)
        if name is None:
            return
        tag = name.group(1).lower()
        if inner[0] == "/":
            self.handle_endtag(tag)
            return
        attrs = []
        if tag in ("a", "img"):
            for key, value in _ATTR.findall(inner, name.end()):
                if value[:1] in ("'", '"'):
                    value = value[1:-1]
                attrs.append((key.lower(), unescape(value) if value else None))
        if inner.endswith("/"):
            self.handle_startendtag(tag, attrs)
            return
        self.handle_starttag(tag, attrs)
        self._raw = _RAW_END.get(tag)

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
