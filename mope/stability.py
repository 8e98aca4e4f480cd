"""How stable is a plan? The units it removes, re-planned on bootstrap resamples of the calibration images.

MoPE is a mean over calibration images of each image's change in the metric, so resampling the images
(with replacement) and re-averaging the kept per-image results gives the scores another calibration
sample of the same size would have given — without running the model again. A unit removed in nearly
every resample is a safe choice; one removed in half of them was decided by the sample. The tie-break
(mope_loss, which decides among units of equal acc1 MoPE — often most of them) is resampled on the same
images; without its per-image results it stays the sample's own, and the result says so (tie_break "fixed"):
fewer plans change, so the stability is overstated.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import MopeError
from .planning import Budget, Plan, plan
from .rules import arguments
from .scoring import per_image

STABLE = 0.9  # a unit removed in at least this fraction of the resamples counts as stable


def plan_stability(scores: pd.DataFrame, budget: Budget, per_image: pd.DataFrame, by: str = "mope",
                   resamples: int = 200, seed: int = 0, per_image_loss: pd.DataFrame | None = None) -> dict:
    """For the plan of `budget` on `scores`: how often each removed unit stays removed over bootstrap resamples.

    per_image: one row per unit (indexed by unit name), one column per calibration image, whose row mean is
    the unit's score in column `by`; per_image_loss: the same for mope_loss (the tie-break), resampled with it.
    Returns resamples, images, units (in the plan), stable (removed in ≥ 90% of the resamples), mean_overlap
    (mean fraction of the plan's units a resampled plan also removes), per_unit (unit name → fraction of
    resamples removing it) and tie_break: "resampled", "fixed" (no per_image_loss) or None (no tie-break).
    """
    arguments("plan_stability", resamples=resamples, seed=seed)
    base = plan(scores, budget, by=by)
    matrix, rows = _aligned(scores, per_image)
    ties = by == "mope" and "mope_loss" in scores.columns
    losses = _aligned(scores, per_image_loss)[0] if ties and per_image_loss is not None else None
    if losses is not None and losses.shape != matrix.shape:
        raise MopeError("the per-image loss results do not cover the same units and images as the per-image MoPE")
    rng = np.random.default_rng(seed)
    counts = dict.fromkeys((u.name for u in base.removed), 0)
    overlaps = []
    resampled = scores.copy()
    columns = [(by, matrix)] + ([("mope_loss", losses)] if losses is not None else [])  # one draw of images for both
    for _ in range(resamples):
        images = rng.integers(0, matrix.shape[1], matrix.shape[1])
        for name, values in columns:
            column = resampled[name].to_numpy(dtype=float, copy=True)
            column[rows] = values[:, images].mean(axis=1)
            resampled[name] = column
        removed = {u.name for u in plan(resampled, budget, by=by).removed}
        for name in counts.keys() & removed:
            counts[name] += 1
        overlaps.append(len(counts.keys() & removed) / max(len(counts), 1))
    per_unit = {name: c / resamples for name, c in counts.items()}
    return {"resamples": resamples, "images": int(matrix.shape[1]), "units": len(per_unit),
            "stable": sum(f >= STABLE for f in per_unit.values()), "mean_overlap": float(np.mean(overlaps)),
            "per_unit": per_unit, "tie_break": None if not ties else "resampled" if losses is not None else "fixed"}


def with_stability(plan_: Plan, scores: pd.DataFrame, per_image: pd.DataFrame, **kw) -> Plan:
    """`plan_` with its stability measured (the budget and ranking it was made with)."""
    plan_.stability = plan_stability(scores, plan_.budget, per_image, by=plan_.by, **kw)
    return plan_


def measured_stability(plan_: Plan, scores: pd.DataFrame, **kw) -> Plan:
    """`plan_` with its stability when the scores' per-image results are in the cache (else unchanged); the
    tie-break's are resampled too when the cache holds them."""
    matrix = per_image(scores) if plan_.by == "mope" else None
    if matrix is None:
        return plan_
    return with_stability(plan_, scores, matrix, per_image_loss=per_image(scores, "mope_loss"), **kw)


def _aligned(scores: pd.DataFrame, per_image: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The per-image matrix in the order of the scores' rows it covers, and those rows' positions."""
    names = scores["unit"].to_numpy()
    covered = np.flatnonzero(np.isin(names, per_image.index.to_numpy()))
    if not len(covered) or per_image.shape[1] < 2:
        raise MopeError("no per-image results for these scores: score them again with the cache on")
    return per_image.loc[names[covered]].to_numpy(dtype=float), covered


def stability_line(result: dict) -> str:
    """One sentence for the CLI and the app."""
    fixed = (" — ties kept the sample's own loss order (no per-image loss cached: score again to resample it; "
             "until then this overstates the stability)") if result.get("tie_break") == "fixed" else ""
    return (f"stability: {result['stable']} of the {result['units']} removed units stay removed in "
            f"≥ {STABLE:.0%} of {result['resamples']} bootstrap resamples of the {result['images']} calibration "
            f"images (mean overlap {result['mean_overlap']:.2f}){fixed}")
