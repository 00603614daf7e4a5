"""A report as a list of blocks (headings, paragraphs, tables, figures), rendered to
Markdown (figures as links to PNG files) and to one self-contained HTML page (figures
embedded as base64 PNG, inline CSS, no external assets)."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from ddmr.io.embed import data_uri


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    """A GitHub Markdown table (header line, separator line, rows) kept as text."""

    markdown: str


@dataclass
class Figure:
    path: Path
    caption: str


Block = Heading | Paragraph | Table | Figure


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def figures(self) -> list[Figure]:
        return [b for b in self.blocks if isinstance(b, Figure)]


def parse_markdown(text: str, shift: int = 0) -> list[Block]:
    """Headings, tables and paragraphs of simple Markdown (what ddmr itself writes).
    ``shift`` adds to heading levels (to nest a file's sections under a report section)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line.strip():
            i += 1
            continue
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        if heading:
            blocks.append(Heading(heading.group(2).strip(), min(6, len(heading.group(1)) + shift)))
            i += 1
        elif line.lstrip().startswith("|"):
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(lines[i].strip())
                i += 1
            blocks.append(Table("\n".join(rows)))
        else:
            para = []
            while (i < len(lines) and lines[i].strip() and not lines[i].lstrip().startswith("|")
                   and not lines[i].startswith("#")):
                para.append(lines[i].strip())
                i += 1
            blocks.append(Paragraph(" ".join(para)))
    return blocks


def _table_cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _inline(text: str) -> str:
    """Escape HTML, then **bold** and `code`."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def table_html(markdown: str) -> str:
    lines = [line for line in markdown.splitlines() if line.strip()]
    if len(lines) < 2:
        return f"<p>{_inline(markdown)}</p>"
    header = _table_cells(lines[0])
    aligns = ["right" if c.endswith(":") else "left" for c in _table_cells(lines[1])]
    aligns += ["left"] * (len(header) - len(aligns))
    parts = ["<table>", "<thead><tr>"]
    parts += [f'<th style="text-align:{a}">{_inline(c)}</th>' for c, a in zip(header, aligns,
                                                                           strict=False)]
    parts.append("</tr></thead><tbody>")
    for line in lines[2:]:
        cells = _table_cells(line)
        parts.append("<tr>" + "".join(f'<td style="text-align:{a}">{_inline(c)}</td>'
                                      for c, a in zip(cells, aligns, strict=False)) + "</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def to_markdown(document: Document, relative_to: Path) -> str:
    """Markdown with figures as relative links (from the folder ``relative_to``)."""
    out = [f"# {document.title}", ""]
    for block in document.blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            out += [block.text, ""]
        elif isinstance(block, Table):
            out += [block.markdown, ""]
        else:
            link = Path(block.path).resolve().relative_to(relative_to.resolve()).as_posix()
            out += [f"![{block.caption}]({link})", "", f"*{block.caption}*", ""]
    return "\n".join(out)


_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:0.25em 0.6em}th{background:#f2f2f2}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:0.9em;color:#555}code{background:#f4f4f4;padding:0 0.2em}
"""


def to_html(document: Document) -> str:
    """One self-contained page: PNG figures embedded as base64 data URIs."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(document.title)}</title>", f"<style>{_STYLE}</style>",
             "</head><body>", f"<h1>{html.escape(document.title)}</h1>"]
    for block in document.blocks:
        if isinstance(block, Heading):
            level = max(2, block.level)
            parts.append(f"<h{level}>{_inline(block.text)}</h{level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Table):
            parts.append(table_html(block.markdown))
        else:
            data = data_uri(Path(block.path).read_bytes())
            caption = html.escape(block.caption)
            parts.append(f'<figure><img alt="{caption}" src="{data}">'
                         f"<figcaption>{caption}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
