"""The main job's report: one Markdown file and one self-contained HTML file (PNGs embedded).

A report is a list of sections; each section has a title, Markdown text and optional images. The
HTML version is rendered by markdown-it-py (CommonMark and pipe tables; it comes with rich) and
inlines every picture as base64 so the file can be mailed. Its tables are made to be read in a
browser: a value per cell with its 95 % interval smaller underneath, numbers that never wrap, the
paired marks (▲u, ▲1) in colour, and wide tables that scroll inside their own box
(``tests/pipeline/test_report_browser.py`` checks it in headless Chromium).
"""

from __future__ import annotations

import base64
import html
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

from chada.io import atomic_write_bytes

__all__ = ["Section", "machine_description", "write_report"]


@dataclass
class Section:
    title: str
    text: str = ""
    images: list[tuple[str, Path]] = field(default_factory=list)  # (caption, path to PNG)


def machine_description() -> dict[str, str]:
    """CPU model and its bf16/AMX flags, cores, torch version and threads of this machine."""
    import torch

    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first processor's
    except OSError:
        pass
    cpu = fields.get("model name") or platform.processor()
    flags = set(fields.get("flags", "").split())
    return {
        "cpu_flags": ", ".join(
            f"{f}: {'yes' if f in flags else 'no'}" for f in ("avx512f", "avx512_bf16", "amx_bf16")
        )
        if flags
        else "unknown",
        "cpu": cpu or "unknown",
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": "yes" if torch.cuda.is_available() else "no",
    }


# An interval "[60.1, 74.0]" or "[+3.3, +20.0]" inside a table cell, and the paired marks.
_INTERVAL = re.compile(r"\[[-+]?\d[\d.]*(?:e[-+]?\d+)?, [-+]?\d[\d.]*(?:e[-+]?\d+)?\]")
_MARK = re.compile(r"▲[u1]")


def _cell(match: re.Match) -> str:
    """One ``<td>``: the value, then its paired marks in colour, then its interval smaller underneath."""
    body = match.group(2)
    marks = "".join(f'<span class="mark">{m}</span>' for m in _MARK.findall(body))
    ci = _INTERVAL.search(body)
    rest = _INTERVAL.sub("", _MARK.sub("", body)).strip()
    return (
        f"{match.group(1)}{rest}{marks}" + (f'<span class="ci">{ci.group(0)}</span>' if ci else "") + "</td>"
    )


def markdown_to_html(md: str) -> str:
    """CommonMark + pipe tables (markdown-it-py) to HTML; every table scrolls inside its own box."""
    from markdown_it import MarkdownIt

    out = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
    out = re.sub(r"(<td[^>]*>)(.*?)</td>", _cell, out, flags=re.S)
    return out.replace("<table>", '<div class="table-wrap"><table>').replace("</table>", "</table></div>")


# Numbers never wrap (white-space: nowrap); a wide table scrolls inside .table-wrap, never the page.
_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
.table-wrap{max-width:100%;overflow-x:auto;margin:1em 0;border:1px solid #e3e3e3}
table{border-collapse:collapse;font-size:.85em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right;white-space:nowrap;vertical-align:top}
th{background:#f3f3f3;position:sticky;top:0}td:first-child,th:first-child{text-align:left}
tbody tr:nth-child(even){background:#fafafa}
.ci{display:block;font-size:.78em;color:#666}.mark{color:#0a6b2c;font-weight:700;margin-left:.25em}
code{background:#f5f5f5;padding:0 .2em}pre{background:#f5f5f5;padding:.8em;overflow:auto}
figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}figcaption{font-size:.9em;color:#555}
"""


def write_report(sections: list[Section], out_dir: str | os.PathLike, title: str) -> tuple[Path, Path]:
    """Write ``report.md`` (images linked by relative path) and ``report.html`` (images inlined)."""
    out_dir = Path(out_dir)
    md_parts = [f"# {title}", ""]
    html_parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
                  f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]  # fmt: skip
    for sec in sections:
        md_parts += [f"## {sec.title}", "", sec.text.strip(), ""]
        html_parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        html_parts.append(markdown_to_html(sec.text.strip()))
        for caption, path in sec.images:
            path = Path(path)
            if not path.exists():
                continue
            rel = os.path.relpath(path, out_dir)
            md_parts += [f"![{caption}]({rel})", "", f"*{caption}*", ""]
            data = base64.b64encode(path.read_bytes()).decode()
            html_parts.append(
                f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    html_parts.append("</body></html>")
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    atomic_write_bytes(md_path, "\n".join(md_parts).encode())
    atomic_write_bytes(html_path, "\n".join(html_parts).encode())
    return md_path, html_path
