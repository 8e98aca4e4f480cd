"""Anytime MoPE: the schedule that gives every unit a score early and refines it to the exact one.

Round 1 runs every unit on a few calibration images, those nearest the decision for a hit metric such as acc1,
else those with the highest unablated loss (where a unit's removal flips or moves an outcome; the zero-shot
text tower: a few prompt templates per class). Each later
round moves the units whose side of some plan's cut is still open (plans of keep 0.25–0.75, uniform or
global) one rung up a ladder of inputs (×1.5 a rung); when no unit's side is open, the rest run every input.
A unit runs each input once (scoring.py keeps its per-input results), so reaching the exact table costs the
exact sweep once. Pure functions: scoring.py runs the rounds.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd

from .errors import MopeError

SCHEDULES = ("exact", "anytime")
KEEPS = (0.25, 0.5, 0.75)  # the plans whose cuts the refinement settles: uniform per layer, global per tower
Z = 2.0  # half-width of a unit's interval, in standard errors, that must clear every cut for its side to be settled
GROWTH = 1.5  # each rung runs half as many images again (2 reached the demo's plans later for the same work)
PRIOR = 2  # images' worth of its group's pooled spread that a unit's own spread is shrunk towards (see spread)


def first_round_size(n_images: int, first: int | None, minimum: int) -> int:
    """Images per unit in round 1: `first` (a positive count: score checks it), or a sixteenth of the set (at
    least `minimum`, at most all); refused when the set has fewer images."""
    size = first if first is not None else min(n_images, max(minimum, math.ceil(n_images / 16)))
    if n_images < size:
        raise MopeError(f"the calibration set has {n_images} images, fewer than the first round's {size}: "
                        f"use more images, a smaller first round, or schedule='exact'")
    return size


def budgeted_first(seconds: float, cost: Callable[[int], float], largest: int) -> int:
    """The most images per unit (1 … `largest`) whose first round, at `cost(images)` seconds, fits `seconds`."""
    low, high = 1, largest
    while low < high:  # cost grows with the images: the largest that fits, by bisection
        mid = (low + high + 1) // 2
        low, high = (mid, high) if cost(mid) <= seconds else (low, mid - 1)
    return low


def check_schedule(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise MopeError(f"unknown schedule '{schedule}'; use exact or anytime")


def standard_error(per_image: np.ndarray, total: int) -> float:
    """Standard error of a mean over `len(per_image)` images drawn without replacement from `total`:
    0 once every image is used, infinite from a single image."""
    n = len(per_image)
    if n >= total:
        return 0.0
    if n < 2:
        return math.inf  # one image tells nothing about the spread
    return float(per_image.std(ddof=1) / math.sqrt(n) * math.sqrt((total - n) / (total - 1)))


def ladder(first: int, total: int, least: int = 1) -> list[int]:
    """The levels a unit climbs: first, then GROWTH times the last (at least `least` more), … , total."""
    rungs = [first]
    while rungs[-1] < total:
        rungs.append(min(total, max(rungs[-1] + least, round(GROWTH * rungs[-1]))))
    return rungs


def next_levels(table: pd.DataFrame, ladders: dict[str, list[int]]) -> np.ndarray:
    """Each unit's level after the next round (table: tower, kind, layer, level, top, params, mope, mope_loss,
    se): unscored units to the first rung; else the units with a cut inside their interval one rung up;
    else every unit to the top. Equal to `level` everywhere: finished."""
    level = table["level"].to_numpy()
    rungs = [ladders[t] for t in table["tower"]]
    up = np.array([next((r for r in rung if r > n), n) for n, rung in zip(level, rungs)])
    if (level == 0).any():
        return np.where(level == 0, up, level)
    open_ = contested(table) & (level < table["top"].to_numpy())
    if open_.any():
        return np.where(open_, up, level)
    return table["top"].to_numpy()


def contested(table: pd.DataFrame) -> np.ndarray:
    """Units (bool per row) whose interval mope ± Z·se (se: spread's) holds the cut of a plan at a keep in KEEPS:
    within each layer and kind (uniform), across each tower's heads and neuron groups by params (global), and
    among each tower's layers."""
    mope, se = table["mope"].to_numpy(dtype=float), effective_se(table)
    out = np.zeros(len(table), dtype=bool)
    width = table["kind"].isin(["head", "neurons"]).to_numpy()
    groups = [g.index for _, g in table[width].groupby(["tower", "kind", "layer"], sort=False)]
    groups += [g.index for _, g in table[~width].groupby(["tower", "kind"], sort=False)]
    for rows in groups:
        out[rows] |= _holds_cut(table.loc[rows], mope[rows], se[rows], np.ones(len(rows)))
    for _, g in table[width].groupby("tower", sort=False):
        out[g.index] |= _holds_cut(g, mope[g.index], se[g.index], g["params"])
    return out


def _holds_cut(group: pd.DataFrame, mope: np.ndarray, se: np.ndarray, size) -> np.ndarray:
    """Rows of one group whose interval holds a cut: the midpoint between the last unit a plan at keep k removes
    (lowest first, ties by mope_loss, until (1 − k) of the group's size) and the first it keeps."""
    keys = [group["mope"], group["mope_loss"]] if "mope_loss" in group.columns else [group["mope"]]
    order = np.lexsort([k.to_numpy(dtype=float) for k in reversed(keys)])
    ranked, cumulative = mope[order], np.cumsum(np.asarray(size, dtype=float)[order])
    out = np.zeros(len(group), dtype=bool)
    for keep in KEEPS:
        cut = int(np.searchsorted(cumulative, (1 - keep) * cumulative[-1] - 1e-9))  # last removed
        if cut + 1 < len(ranked):
            line = (ranked[cut] + ranked[cut + 1]) / 2
            out |= np.abs(mope - line) <= Z * se
    return out


def effective_se(table: pd.DataFrame) -> np.ndarray:
    """Each unit's standard error with its spread shrunk towards its group's (tower, kind) pooled spread by PRIOR
    images: a unit whose few images all agree (se 0, e.g. acc1 with no flips) is not taken as settled."""
    level, top = table["level"].to_numpy(dtype=float), table["top"].to_numpy(dtype=float)
    se = table["se"].to_numpy(dtype=float)
    factor = np.sqrt(np.clip(top - level, 0, None) / np.maximum(top - 1, 1) / np.maximum(level, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.where((factor > 0) & np.isfinite(se), se / factor, np.nan)
    out = se.copy()
    for _, g in table.groupby(["tower", "kind"], sort=False):
        rows = g.index.to_numpy()
        pooled = np.sqrt(np.nanmean(spread[rows] ** 2)) if np.isfinite(spread[rows]).any() else 0.0
        n = level[rows]
        shrunk = np.sqrt(((n - 1) * np.nan_to_num(spread[rows]) ** 2 + PRIOR * pooled ** 2) / np.maximum(n - 1 + PRIOR, 1))
        out[rows] = np.where(np.isfinite(se[rows]) & (factor[rows] > 0), shrunk * factor[rows], se[rows])
    return out


def used_span(table: pd.DataFrame) -> str:
    """What an anytime table's units ran: '16–24 images per unit', plus ', 64–128 texts per text unit' when text
    units ran only some of their prompts / captions (the zero-shot text tower runs prompt templates)."""
    def span(values: pd.Series) -> str:
        low, high = int(values.min()), int(values.max())
        return f"{low}" if low == high else f"{low}–{high}"

    text = table["tower"] == "text" if "tower" in table.columns else pd.Series(False, index=table.index)
    vision = table.loc[~text, "images_used"].dropna() if "images_used" in table.columns else pd.Series(dtype=float)
    parts = [f"{span(vision)} images per unit"] if len(vision) else []
    if "texts_used" in table.columns and table.loc[text, "texts_used"].notna().any():
        parts.append(f"{span(table.loc[text, 'texts_used'].dropna())} texts per text unit")
    return ", ".join(parts)


def flagged(table: pd.DataFrame, column: str) -> pd.Series:
    """A yes/no column of an anytime table (estimate, first_order) as bools: False where empty (a row of an exact
    table, or one read back from a file) and everywhere when the table lacks the column."""
    if column not in table.columns:
        return pd.Series(False, index=table.index)
    return table[column].fillna(False).astype(bool)


def note(table: pd.DataFrame) -> str | None:
    """What a plan from a table that still holds estimates must say, e.g. 'ranked on 32–48 images per unit,
    round 2 of anytime scoring: 87 of 148 units are estimates (the loss on the images they did not run: first-order
    estimates)'; None for a final table."""
    estimates = int(flagged(table, "estimate").sum())
    if not estimates:
        return None
    rounds = f", round {int(table['round'].max())} of anytime scoring" if "round" in table.columns else ""
    guessed = " (the loss on the images they did not run: first-order estimates)" if flagged(table, "first_order").any() else ""
    return f"ranked on {used_span(table)}{rounds}: {estimates} of {len(table)} units are estimates{guessed}"
