"""Downloads of what a figure or table shows: its data as CSV, the figure as PNG, written once under HOME/downloads."""
from __future__ import annotations

import hashlib
import logging

import pandas as pd
import plotly.graph_objects as go

from mope.errors import MopeError
from mope.io import atomic_write, atomic_write_text

from ..state import AppState

PNG_WIDTH = 1200  # pixels at scale 1; the figure's own height; saved at scale 2
NO_PNG = ("saving a figure as PNG on the server needs kaleido and Chrome or Chromium there (pip install kaleido; "
          "apt-get install chromium); meanwhile the camera icon on the figure (top right, on hover) saves it from your "
          "browser")


def table_csv(df: pd.DataFrame | None, stem: str, state: AppState) -> str:
    """The table as a CSV file under HOME/downloads (named by its content, so asking twice writes once)."""
    if df is None or len(df) == 0:
        raise MopeError(f"nothing to download yet: the {stem.replace('-', ' ')} is empty")
    text = df.to_csv(index=False)
    path = state.home / "downloads" / f"{_safe(stem)}-{_digest(text.encode())}.csv"
    if not path.is_file():
        atomic_write_text(path, text)
    return str(path)


def figure_png(fig: go.Figure | None, stem: str, state: AppState) -> str:
    """The figure as the page draws it (plotly's own renderer, kaleido), a PNG file under HOME/downloads."""
    if fig is None:
        raise MopeError(f"nothing to save yet: the {stem.replace('-', ' ')} figure is not drawn")
    spec = fig.to_json()
    path = state.home / "downloads" / f"{_safe(stem)}-{_digest(spec.encode())}.png"
    if path.is_file():
        return str(path)
    try:
        png = fig.to_image(format="png", width=PNG_WIDTH, height=fig.layout.height or 500, scale=2)
    except Exception as e:  # kaleido missing, no browser for it, or the browser failed: say what to install
        logging.getLogger("app").warning("PNG export failed: %s: %s", type(e).__name__, e)
        raise MopeError(NO_PNG) from None

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(png)
    atomic_write(path, write)
    return str(path)


def _safe(stem: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in stem)[:60]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]
