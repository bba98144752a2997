"""Turning repository content into HTML: Markdown cards, highlighted code, diffs.

Card Markdown comes from anyone who can push, so raw HTML in it is escaped (markdown-it's
`html` option off) and links keep only safe schemes: no script reaches the page from a card.
"""

from __future__ import annotations

from markdown_it import MarkdownIt
from markupsafe import Markup, escape
from pygments import highlight as _pygments
from pygments.formatters import HtmlFormatter
from pygments.lexers import DiffLexer, TextLexer, get_lexer_by_name, guess_lexer_for_filename
from pygments.util import ClassNotFound

_FORMATTER = HtmlFormatter(nowrap=True)
# Above this many bytes a file is shown plain: highlighting megabytes would be slow.
HIGHLIGHT_LIMIT = 512 * 1024


def _fence(code: str, lang: str, _attrs: str) -> str:
    try:
        lexer = get_lexer_by_name(lang) if lang else TextLexer()
    except ClassNotFound:
        lexer = TextLexer()
    return _pygments(code, lexer, _FORMATTER)


_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "highlight": _fence})
_md.enable(["table", "strikethrough"])
_SAFE_LINK = ("http://", "https://", "mailto:", "/", "#", "./", "../")


def _validate_link(url: str) -> bool:
    url = url.strip().lower()
    # Relative links have no scheme; any scheme other than these (javascript:, data:) goes.
    return url.startswith(_SAFE_LINK) or ":" not in url.split("/", 1)[0]


_md.validateLink = _validate_link


def _is_relative(url: str) -> bool:
    return not url.startswith(("/", "#")) and ":" not in url.split("/", 1)[0]


def _relative_to(attr: str, base_key: str):
    """A renderer rule that points relative `attr` URLs into the repository, as the Hub
    does: links to files open their page (blob), images load the file itself (resolve)."""

    def rule(self, tokens, idx, options, env):
        token = tokens[idx]
        url = token.attrGet(attr)
        if isinstance(url, str) and env.get(base_key) and _is_relative(url):
            token.attrSet(attr, f"{env[base_key]}/{url.removeprefix('./')}")
        if token.type == "image":
            return self.image(tokens, idx, options, env)
        return self.renderToken(tokens, idx, options, env)

    return rule


_md.add_render_rule("link_open", _relative_to("href", "blob"))
_md.add_render_rule("image", _relative_to("src", "raw"))


def markdown(text: str, files_base: str = "") -> Markup:
    """A card's Markdown (front matter already removed) as safe HTML; relative links and
    images resolve under `files_base` (`/alice/x`), on its main branch."""
    env = {}
    if files_base:
        env = {"blob": f"{files_base}/blob/main", "raw": f"{files_base}/resolve/main"}
    return Markup(_md.render(text, env))


def strip_front_matter(text: str) -> str:
    """The card's text after its leading `---` YAML block, if any."""
    if not text.startswith("---"):
        return text
    lines = text.splitlines(keepends=True)
    if lines[0].strip() != "---":
        return text
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            return "".join(lines[i + 1:])
    return text


def code(text: str, filename: str) -> Markup:
    """A file's text, highlighted by its name (plain above HIGHLIGHT_LIMIT), one line each."""
    if len(text) > HIGHLIGHT_LIMIT:
        return Markup(escape(text))
    try:
        lexer = guess_lexer_for_filename(filename, text[:4096])
    except ClassNotFound:
        lexer = TextLexer()
    return Markup(_pygments(text, lexer, _FORMATTER))


def diff(text: str) -> Markup:
    return Markup(_pygments(text, DiffLexer(), _FORMATTER))
