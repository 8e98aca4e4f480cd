"""Anytime MoPE: the schedule that gives every unit a score early and refines it to the exact one.

Round 1 scores every unit on a small subset of the calibration images; each later round doubles the
subset for the units whose rank is still uncertain where plans at keep 0.25–0.75 draw their line;
when none is, the rest go to the full set. The last round of every unit is the exact sweep on all
images, so the final table equals `schedule="exact"`. Pure functions: scoring.py runs the rounds.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .errors import MopeError

SCHEDULES = ("exact", "anytime")
BAND = (0.25, 0.75)  # quantiles of each tower × kind between which plans of keep 0.25–0.75 draw their line
Z = 2.0  # half-width of the interval, in standard errors, that must clear the band for a unit to be settled


def first_round_size(n_images: int, first: int | None, minimum: int) -> int:
    """Images per unit in round 1: `first`, or a sixteenth of the set (at least `minimum`, at most all); checked."""
    size = first if first is not None else min(n_images, max(minimum, math.ceil(n_images / 16)))
    if size <= 0:
        raise MopeError(f"the first round needs a positive number of images, got {size}")
    if n_images < size:
        raise MopeError(f"the calibration set has {n_images} images, fewer than the first round's {size}: "
                        f"use more images, a smaller first round, or schedule='exact'")
    return size


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


def uncertain(table: pd.DataFrame, total: int) -> np.ndarray:
    """Units (bool per row) not yet on every image whose interval mope ± Z·se reaches into the band of
    their tower and kind: their side of some plan's line is still open."""
    out = np.zeros(len(table), dtype=bool)
    for _, group in table.groupby(["tower", "kind"], sort=False):
        low, high = group["mope"].quantile(BAND[0]), group["mope"].quantile(BAND[1])
        reach = (group["mope"] + Z * group["se"] >= low) & (group["mope"] - Z * group["se"] <= high)
        out[table.index.get_indexer(group.index)] = (reach & (group["images_used"] < total)).to_numpy()
    return out


def next_round(table: pd.DataFrame, total: int, size: int) -> tuple[np.ndarray, int]:
    """(rows to score, images each) for the round after one run on `size` images: the uncertain units on
    twice as many, or, when none is left, every unit not yet exact on all of them. Nothing left: size 0."""
    size = min(total, 2 * size)
    todo = uncertain(table, total) & (table["images_used"] < size).to_numpy()
    if todo.any():
        return todo, size
    rest = (table["images_used"] < total).to_numpy()
    return rest, total if rest.any() else 0


def note(table: pd.DataFrame) -> str | None:
    """What a plan from a table that still holds estimates must say, e.g. 'ranked on 32–64 images per unit,
    round 2 of anytime scoring: 87 of 148 units are estimates'; None for a final table."""
    if "estimate" not in table.columns or not table["estimate"].any():
        return None
    low, high = int(table["images_used"].min()), int(table["images_used"].max())
    span = f"{low}" if low == high else f"{low}–{high}"
    rounds = f", round {int(table['round'].max())} of anytime scoring" if "round" in table.columns else ""
    return f"ranked on {span} images per unit{rounds}: {int(table['estimate'].sum())} of {len(table)} units are estimates"
