"""The order of units by their scores: MoPE first, its ties broken by the continuous loss.

With an accuracy metric on a few hundred images many units score exactly the same (often 0); the
plan would then remove them in index order. `rank_units` orders them by `mope_loss` (the increase of
the zero-shot / contrastive loss when the unit is removed, computed from the same ablations) instead.
"""
from __future__ import annotations

import pandas as pd


def rank_units(df: pd.DataFrame) -> pd.Series:
    """1 = the most important unit of its tower: by mope, ties broken by mope_loss; exact ties of both keep
    the unit order. NaN where mope is NaN (not scored yet)."""
    keys = ["mope", "mope_loss"] if "mope_loss" in df.columns else ["mope"]
    scored = df[df["mope"].notna()].sort_values(keys, ascending=False, kind="stable")
    rank = (scored.groupby("tower", sort=False).cumcount() + 1).reindex(df.index)
    return rank.astype(int) if rank.notna().all() else rank
