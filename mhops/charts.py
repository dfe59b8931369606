"""Trend charts for the reports: matplotlib line charts written as SVG, byte for byte stable.

Owns how a chart looks (size, fonts with Chinese fallbacks, axes, date ticks) and the
settings that make matplotlib's SVG reproducible: a fixed ``svg.hashsalt`` for its
element ids, no creation date in the metadata, and text kept as text (``svg.fonttype
none``) so the browser or PDF renderer draws Chinese labels with the system's CJK font
instead of matplotlib failing to find glyphs in its own.
"""

from __future__ import annotations

import io
import logging
import warnings
from datetime import datetime

# Text is emitted as <text> for the viewer's fonts: those names go first, matplotlib only
# needs a font for metrics (DejaVu Sans ships with it).
FONTS = ["Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Micro Hei", "Microsoft YaHei",
         "PingFang SC", "DejaVu Sans"]
_RC = {"svg.hashsalt": "mhops", "svg.fonttype": "none", "font.family": "sans-serif",
       "font.sans-serif": FONTS, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
       "figure.dpi": 72, "lines.linewidth": 1.4, "lines.markersize": 3,
       "date.autoformatter.day": "%m-%d", "axes.unicode_minus": False}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    # Missing CJK fonts are expected on servers: the SVG keeps text as text anyway.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    return plt


def line_chart(title: str, series: dict[str, list[tuple[datetime, float]]], *,
               ylabel: str = "", ymax: float | None = None, hline: float | None = None,
               width: float = 7.5, height: float = 2.6) -> str:
    """One SVG (text) with a line per series; an empty series list gives an empty frame."""
    plt = _plt()
    import matplotlib.dates as mdates

    with plt.rc_context(_RC), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig, ax = plt.subplots(figsize=(width, height))
        try:
            for name in series:
                pts = sorted(series[name])
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
            if hline is not None:
                ax.axhline(hline, color="#cf222e", linewidth=0.8, linestyle="--")
            ax.set_title(title, loc="left")
            ax.set_ylabel(ylabel)
            if ymax is not None:
                ax.set_ylim(0, ymax)
            else:
                ax.set_ylim(bottom=0)
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))
            if any(series.values()):
                ax.legend(loc="upper left", fontsize=7, ncol=min(4, len(series)),
                          frameon=False)
            fig.tight_layout()
            buf = io.StringIO()
            fig.savefig(buf, format="svg", metadata={"Date": None})
        finally:
            plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]
