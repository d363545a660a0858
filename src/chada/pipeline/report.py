"""The main job's report: one Markdown file and one self-contained HTML file (PNGs embedded).

A report is a list of sections; each section has a title, Markdown text and optional images. The
HTML version converts the small Markdown subset we write (headings, paragraphs, bullet lists, pipe
tables, code spans, fenced code) and inlines every picture as base64 so the file can be mailed.
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
        "cpu_flags": ", ".join(f"{f}: {'yes' if f in flags else 'no'}" for f in ("avx512f", "avx512_bf16", "amx_bf16"))
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


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return text


def markdown_to_html(md: str) -> str:
    """Convert the Markdown subset this report uses to HTML."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            block = []
            while j < len(lines) and not lines[j].startswith("```"):
                block.append(lines[j])
                j += 1
            out.append("<pre><code>" + html.escape("\n".join(block)) + "</code></pre>")
            i = j + 1
            continue
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-{2,}:?", c) for c in cells):
                    rows.append(cells)
                i += 1
            head, *body = rows
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>")
            out.extend("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
            out.append("</tbody></table>")
            continue
        m = re.match(r"(#{1,4}) (.*)", line)
        if m:
            level = len(m.group(1))
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            para = [line]
            while i + 1 < len(lines) and lines[i + 1].strip() and not re.match(r"(#|- |\||```)", lines[i + 1]):
                i += 1
                para.append(lines[i])
            out.append("<p>" + _inline(" ".join(para)) + "</p>")
        i += 1
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}code{background:#f5f5f5;padding:0 .2em}
pre{background:#f5f5f5;padding:.8em;overflow:auto}figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#555}
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
