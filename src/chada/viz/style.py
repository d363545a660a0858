"""Shared plotting helpers: headless backend, atomic PNG+SVG saving, colours, markers, legends.

Every figure of :mod:`chada.viz` goes through :func:`save_figure`, which writes BOTH ``<stem>.png``
and ``<stem>.svg`` (PNG to look at, SVG to edit for a paper), each via temp file + rename so a reader
never sees half a picture.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chada.io import atomic_write_bytes

__all__ = [
    "MODEL_COLORS",
    "model_style",
    "model_styles",
    "ATTENTION_CMAP",
    "IMAGE_CMAP",
    "MATRIX_CMAP",
    "MARKERS",
    "use_agg",
    "figure_paths",
    "save_figure",
    "categorical_colors",
    "legend_outside",
    "add_colorbar",
]

ATTENTION_CMAP = "inferno"
IMAGE_CMAP = "gray"
MATRIX_CMAP = "viridis"
# Filled markers only: hollow ones vanish at small sizes in dense scatter plots.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "p", "h")

_PLOT_SUFFIXES = (".png", ".svg")

# One colour per model in every figure (bars, curves, reconstruction and attention titles, channel
# subsets), keyed by architecture. An untrained copy takes a light tint of its architecture's colour
# (and dashed lines / hatched bars), so a model and its random init read as a pair.
MODEL_COLORS: dict[str, str] = {
    "chada_vit": "#1f77b4",  # blue
    "inter_channel_vit": "#ff7f0e",  # orange
    "one_channel_vit": "#2ca02c",  # green
    "fixed_channel_vit": "#9467bd",  # purple
    "handmade": "#3a3a3a",  # near black
    "shortcut": "#8c8c8c",  # grey
}
_ALIASES = {"chada": "chada_vit", "inter_channel": "inter_channel_vit", "one_channel": "one_channel_vit",
            "fixed_channel": "fixed_channel_vit", "cellprofiler": "handmade", "hand_made": "handmade"}  # fmt: skip
_MODEL_MARKERS = {"chada_vit": "o", "inter_channel_vit": "s", "one_channel_vit": "^", "fixed_channel_vit": "v",
                  "handmade": "D", "shortcut": "P"}  # fmt: skip
# Names no rule knows: a stable pick (by a hash of the name) from colours none of the above uses.
_SPARE = ("#d62728", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#7f3c8d", "#11a579", "#e73f74")
_UNTRAINED_WORDS = ("untrained", "random", "rand_init", "scratch", "init")


def _base_name(name: str) -> str:
    """The name without an untrained/seed suffix: a model and its untrained copy share one hue."""
    import re

    return re.sub(r"([_-]?(untrained|random|rand_init|scratch|init|s\d+|seed\d+))+$", "", name.lower())


def model_styles(models: Sequence[tuple[str, str | None]]) -> dict[str, dict[str, Any]]:
    """:func:`model_style` of each ``(name, family)`` of one figure: models no rule knows get distinct
    spare colours (a model and its untrained copy share a hue)."""
    from matplotlib.colors import to_hex

    out: dict[str, dict[str, Any]] = {}
    spare_of: dict[str, str] = {}
    for name, family in models:
        base = _base_name(name)
        if _model_key(name) is None and base not in spare_of:
            spare_of[base] = to_hex(model_style(base, None, avoid=list(spare_of.values()))["color"])
        avoid = [c for b, c in spare_of.items() if b != base]
        out[name] = model_style(name, family, avoid=avoid)
    return out


def _model_key(name: str) -> str | None:
    low = name.lower().replace("-", "_").replace(" ", "_")  # "One-Channel ViT (DINO)" -> one_channel_vit
    for key in sorted([*MODEL_COLORS, *_ALIASES], key=len, reverse=True):
        if key in low:
            return _ALIASES.get(key, key)
    return None


def model_style(name: str, family: str | None = None, avoid: Sequence[str] = ()) -> dict[str, Any]:
    """``{"color", "marker", "linestyle", "hatch", "untrained"}`` of a model in every figure.

    The colour comes from the architecture in the name (``chada_vit``, ``one_channel_vit_untrained``,
    ``chada_vit_s1`` ...), lightened for an untrained copy (``family="untrained"`` or the name says so).
    A name no rule knows gets a spare colour picked by a hash of the name (the same in every figure),
    skipping the spare colours in ``avoid`` (see :func:`model_styles`).
    """
    import zlib

    from matplotlib.colors import to_rgb

    key = _model_key(name)
    if key:
        base = MODEL_COLORS[key]
    else:
        start = zlib.crc32(_base_name(name).encode()) % len(_SPARE)
        free = [_SPARE[(start + i) % len(_SPARE)] for i in range(len(_SPARE))]
        base = next((c for c in free if c not in avoid), free[0])
    untrained = family == "untrained" or (family is None and any(w in name.lower() for w in _UNTRAINED_WORDS))
    rgb = to_rgb(base)
    if untrained:
        rgb = tuple(0.45 * c + 0.55 for c in rgb)  # a light tint of the same hue
    return {
        "color": rgb,
        "marker": _MODEL_MARKERS.get(key or "", "o"),
        "linestyle": "--" if untrained else (":" if family == "handmade" or key == "handmade" else "-"),
        "hatch": "//" if untrained else (".." if family == "handmade" or key == "handmade" else None),
        "untrained": untrained,
    }


def use_agg() -> None:
    """Select the non-interactive Agg backend (no display on servers, no Tk import)."""
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg", force=True)


def figure_paths(out: str | os.PathLike) -> tuple[Path, Path]:
    """``(png, svg)`` paths for ``out``: ``x.png``, ``x.svg`` or ``x`` all give ``x.png`` + ``x.svg``."""
    p = Path(out)
    if p.suffix.lower() in _PLOT_SUFFIXES:
        p = p.with_suffix("")
    elif p.suffix:
        raise ValueError(f"plot output must end in .png or .svg (both are written), got {out}")
    return p.with_name(p.name + ".png"), p.with_name(p.name + ".svg")


def save_figure(
    fig: Any,
    out: str | os.PathLike,
    dpi: int = 150,
    close: bool = True,
    formats: tuple[str, ...] = ("png", "svg"),
) -> list[Path]:
    """Write ``fig`` as PNG and SVG (or only ``formats``) next to each other, atomically; returns the
    paths written.

    The canvas is rendered to memory first, so a failure while drawing leaves no partial file.
    """
    import matplotlib.pyplot as plt

    png, svg = figure_paths(out)
    written = []
    for path, fmt in ((png, "png"), (svg, "svg")):
        if fmt not in formats:
            continue
        buf = io.BytesIO()
        # SVG text stays text (editable, searchable) instead of glyph outlines.
        with plt.rc_context({"svg.fonttype": "none"}):
            fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight", facecolor="white")
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
    if close:
        plt.close(fig)
    return written


def categorical_colors(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` distinguishable colours: tab10 up to 10, tab20 up to 20, then evenly spaced on turbo."""
    import matplotlib

    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    if n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [cmap(i) for i in range(n)]
    cmap = matplotlib.colormaps["turbo"]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def legend_outside(
    ax: Any,
    title: str | None = None,
    max_entries: int = 25,
    fontsize: float = 8,
    handles: Sequence[Any] | None = None,
) -> None:
    """Legend to the right of the axes (never over the data), cut to ``max_entries`` with a note.

    Long legends inside the axes hide points; outside they only widen the figure, which
    ``bbox_inches="tight"`` in :func:`save_figure` accounts for.
    """
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    else:
        handles, labels = list(handles), [h.get_label() for h in handles]
    if not handles:
        return
    extra = len(handles) - max_entries
    if extra > 0:
        handles, labels = handles[:max_entries], labels[:max_entries]
        title = f"{title or ''} (first {max_entries}; {extra} more)".strip()
    ncol = 1 if len(handles) <= 18 else 2
    ax.legend(
        handles,
        labels,
        title=title,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        fontsize=fontsize,
        title_fontsize=fontsize + 1,
        frameon=False,
        ncol=ncol,
        markerscale=1.5,
    )


def add_colorbar(
    fig: Any, mappable: Any, axes: Any | Sequence[Any], label: str, location: str = "right"
) -> Any:
    """A colour bar attached to one or several axes, with a label (units or meaning of the colour)."""
    cb = fig.colorbar(mappable, ax=axes, location=location, shrink=0.9, pad=0.02, fraction=0.05)
    cb.set_label(label, fontsize=8)
    cb.ax.tick_params(labelsize=7)
    # Few, short tick labels: narrow horizontal bars otherwise print overlapping 5-digit numbers.
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    axis = cb.ax.xaxis if location in ("bottom", "top") else cb.ax.yaxis
    axis.set_major_locator(MaxNLocator(nbins=3 if location in ("bottom", "top") else 5))
    axis.set_major_formatter(FormatStrFormatter("%.3g"))
    return cb
