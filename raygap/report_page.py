"""``report.html``: the report (``report.md``, :mod:`raygap.reproduction`) as a page to look at.

markdown-it-py (CommonMark with its GFM table rule) turns the Markdown into HTML; the page
then differs from a plain rendering in a few token rewrites, not in hand-written conversion:

* every table is an HTML ``<table>``, numbers in tabular figures, a paired difference with
  adjusted p < 0.05 (its mark :data:`~raygap.significance.SIGNIFICANT`, explained in the note
  under the table) highlighted; the table of ours beside the paper's gets a header of two rows,
  each cell's name over its :data:`BESIDE` sub-columns;
* a paragraph of images only is a gallery (the per-row figures) or a figure (the table
  figure): thumbnails beside each other, each a link to the full-size PNG;
* the settings -- the section "Settings in force" and the table of the main settings beside
  the paper's (:data:`~raygap.comparability.SETTINGS_HEADER`) -- are folded in ``<details>``.

The page is self-contained: the style is inline, no script, no web font, no request leaves
the folder (the figures are the PNGs beside it, by relative path); a Content-Security-Policy
says so to the browser too. It fits a 1280 px wide window: tables wrap their cells (a narrow
``mean ± std`` breaks before the ±), long lines of settings wrap, images scale down.
"""
from __future__ import annotations

import html

from .comparability import SETTINGS_HEADER
from .significance import SIGNIFICANT

BESIDE = ("paper", "ours", "ours − paper")    # a cell's sub-columns in a table of ours beside the paper's
FOLDED_SECTIONS = ("Settings in force",)      # sections shown folded, their heading the summary

CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"
STYLE = """
:root { color-scheme: light; }
body { margin: 0; background: #fff; color: #1d1f21; font: 15px/1.45 system-ui, -apple-system, "Segoe UI",
       Roboto, "Helvetica Neue", Arial, sans-serif; overflow-wrap: break-word; }
main { box-sizing: border-box; max-width: 1240px; margin: 0 auto; padding: 8px 20px 40px; }
h1 { font-size: 1.6em; margin: .6em 0 .3em; } h2 { font-size: 1.3em; margin: 1.4em 0 .4em;
  border-bottom: 1px solid #ddd; padding-bottom: .15em; } h3 { font-size: 1.1em; margin: 1.2em 0 .3em; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d6d9dc; padding: 3px 5px; vertical-align: top; }
thead th { background: #f1f3f5; vertical-align: bottom; text-align: right; }
thead th.group { text-align: center; }
tbody tr:nth-child(even) { background: #fafbfc; }
td:first-child, th:first-child { text-align: left; }
td.significant { background: #e3f4e3; font-weight: 600; }
code, pre { font: 12.5px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; padding: 8px 10px; white-space: pre-wrap;
      overflow-wrap: anywhere; }
img { max-width: 100%; height: auto; }
p.figure img { border: 1px solid #e1e4e8; }
p.gallery { display: flex; flex-wrap: wrap; gap: 8px; margin-top: .2em; }
p.gallery a { display: block; line-height: 0; max-width: 100%; }
p.gallery img { height: 170px; width: auto; object-fit: contain; border: 1px solid #e1e4e8; }
details { margin: 1em 0; border: 1px solid #e1e4e8; border-radius: 4px; padding: 4px 12px; }
details > summary { cursor: pointer; font-weight: 600; font-size: 1.1em; padding: 4px 0; }
"""


def report_html(markdown: str) -> str:
    """The page of a report: ``markdown`` is report.md's text; its first heading is the title."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark").enable("table")
    tokens = md.parse(markdown)
    for i, tok in enumerate(tokens):
        if tok.type == "td_open" and SIGNIFICANT in tokens[i + 1].content:
            tok.attrJoin("class", "significant")
        elif tok.type == "paragraph_open":
            kind = _images_only(tokens[i + 1])
            if kind:
                tok.attrJoin("class", kind)
        elif tok.type == "inline" and " ± " in tok.content:      # a narrow "63.00 ± 3.00" breaks before ±, not after
            for kid in tok.children or []:
                kid.content = kid.content.replace(" ± ", " ±\u00a0")
    tokens = _fold(_fold_tables(_group_headers(tokens)))
    title = next((tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"), "report")
    body = md.renderer.render(tokens, md.options, {})
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(_plain(title))}</title>\n<style>{STYLE}</style>\n</head>\n"
            f"<body>\n<main>\n{body}</main>\n</body>\n</html>\n")


def _plain(markdown_inline: str) -> str:
    """A heading's Markdown source as its plain text (the backslash escapes undone)."""
    from markdown_it.common.utils import unescapeAll

    return unescapeAll(markdown_inline)


def _group_headers(tokens: list) -> list:
    """A table of ours beside the paper's (its header "Method", then "<cell> paper", "<cell> ours",
    "<cell> ours − paper" per cell: :data:`BESIDE`) gets a header of two rows: each cell's name over
    its three sub-columns."""
    from markdown_it.token import Token

    out, i = [], 0
    while i < len(tokens):
        if tokens[i].type == "thead_open":
            end = next(k for k in range(i, len(tokens)) if tokens[k].type == "thead_close")
            grouped = _grouped([_plain(t.content) for t in tokens[i:end] if t.type == "inline"])
            if grouped:
                out.append(Token("html_block", "", 0, content=grouped))
                i = end + 1
                continue
        out.append(tokens[i])
        i += 1
    return out


def _grouped(cells: list[str]) -> str | None:
    """The two-row ``<thead>`` of a header of ours beside the paper's, or None for any other header."""
    rest, n = cells[1:], len(BESIDE)
    if not rest or len(rest) % n:
        return None
    groups = []
    for k in range(0, len(rest), n):
        chunk = list(zip(rest[k:k + n], BESIDE, strict=True))
        names = {c[:-len(kind) - 1] for c, kind in chunk}
        if len(names) != 1 or not all(c.endswith(" " + kind) for c, kind in chunk):
            return None
        groups.append(names.pop())
    esc = html.escape
    top = f'<th rowspan="2">{esc(cells[0])}</th>' + "".join(f'<th colspan="{n}" class="group">{esc(g)}</th>'
                                                           for g in groups)
    sub = "".join(f"<th>{esc(kind)}</th>" for _ in groups for kind in BESIDE)
    return f"<thead>\n<tr>{top}</tr>\n<tr>{sub}</tr>\n</thead>\n"


def _images_only(inline) -> str | None:
    """``"gallery"`` for a paragraph of several images (each maybe in a link), ``"figure"`` for one,
    else None."""
    kids = inline.children or []
    images = sum(k.type == "image" for k in kids)
    rest = all(k.type in ("image", "link_open", "link_close", "softbreak")
               or (k.type == "text" and not k.content.strip()) for k in kids)
    return None if not images or not rest else "gallery" if images > 1 else "figure"


def _opening(summary: str):
    from markdown_it.token import Token

    return Token("html_block", "", 0, content=f"<details>\n<summary>{html.escape(summary)}</summary>\n")


def _closing():
    from markdown_it.token import Token

    return Token("html_block", "", 0, content="</details>\n")


def _fold(tokens: list) -> list:
    """Each section headed by one of :data:`FOLDED_SECTIONS` (up to the next heading of its level
    or above) in ``<details>``, the heading's text its summary."""
    out, open_level = [], None
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.type == "heading_open":
            level = int(tok.tag[1])
            if open_level is not None and level <= open_level:
                out.append(_closing())
                open_level = None
            text = _plain(tokens[i + 1].content)
            if open_level is None and text in FOLDED_SECTIONS:
                out.append(_opening(text))
                open_level = level
                i += 3                    # heading_open, inline, heading_close: the summary instead
                continue
        out.append(tok)
        i += 1
    if open_level is not None:
        out.append(_closing())
    return out


def _fold_tables(tokens: list) -> list:
    """The table of the main settings beside the paper's (its header :data:`SETTINGS_HEADER`)
    in ``<details>``."""
    out, folded = [], False
    for i, tok in enumerate(tokens):
        if tok.type == "table_open":
            folded = _header(tokens, i) == list(SETTINGS_HEADER)
            if folded:
                out.append(_opening("The main settings, ours and the paper's (stated or read)"))
        out.append(tok)
        if tok.type == "table_close" and folded:
            out.append(_closing())
            folded = False
    return out


def _header(tokens: list, i: int) -> list[str]:
    """The header cells' plain text of the table opened at ``tokens[i]``."""
    cells = []
    for tok in tokens[i + 1:]:
        if tok.type == "thead_close":
            break
        if tok.type == "inline":
            cells.append(_plain(tok.content))
    return cells
