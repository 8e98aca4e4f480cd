"""Downloads of what a figure or table shows: its data as CSV, written once under HOME/downloads."""
from __future__ import annotations

import hashlib

import pandas as pd

from mope.errors import MopeError
from mope.io import atomic_write_text

from ..state import AppState


def table_csv(df: pd.DataFrame | None, stem: str, state: AppState) -> str:
    """The table as a CSV file under HOME/downloads (named by its content, so asking twice writes once)."""
    if df is None or len(df) == 0:
        raise MopeError(f"nothing to download yet: the {stem.replace('-', ' ')} is empty")
    text = df.to_csv(index=False)
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in stem)[:60]
    path = state.home / "downloads" / f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.csv"
    if not path.is_file():
        atomic_write_text(path, text)
    return str(path)
