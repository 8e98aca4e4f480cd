"""Accuracy vs compression: prune by several rankings at several budgets and evaluate each, without distillation.

This is the study behind the paper's claim that MoPE ranks modules better than magnitude or random
choice: the same scores table, the same budgets, only the ranking column changes.
"""
from __future__ import annotations

from typing import Callable, Sequence

import pandas as pd

from . import importance
from .clip import Clip
from .data.tasks import Task
from .errors import MopeError
from .evaluation import default_metric, evaluate
from .pipeline import prune_model
from .planning import Budget, Plan, plan
from .progress import TimeLeft
from .rules import NUMBERS, items, name_list
from .scoring import Cancelled
from .surgery import prune
from .units import TOWERS

DEFAULT_RANKINGS = ("mope", "magnitude", "random")  # score columns a study compares unless told otherwise


def ranking_names(columns: Sequence[str]) -> dict[str, str]:
    """Shown name → score column: registered criteria by their label (MoPE, Taylor …), others as they are."""
    labels = importance.labels()
    return {labels.get(column, column): column for column in columns}


def compression_curve(clip: Clip, scores: pd.DataFrame, task: Task, removed: Sequence[float] = (0.25, 0.5, 0.75),
                      rankings: dict[str, str] | None = None, towers: Sequence[str] = ("vision",),
                      metric: str | None = None, progress: Callable | None = None,
                      should_stop: Callable[[], bool] | None = None, iterative: Sequence[int] = (),
                      calibration: Task | None = None, step_schedule: str = "even") -> pd.DataFrame:
    """One row per (fraction of head+FFN params removed, ranking): the metric of the physically pruned model.

    rankings maps a display name to a column of `scores` (low scores are removed first). Row 0 of each
    ranking is the unpruned model. iterative=(K, …) adds "MoPE iterative ×K" curves: the budget reached
    in K steps, re-scoring on `calibration` between them (the data `scores` came from). progress(done,
    total, eta, rows) after each evaluation.
    """
    towers = _check_curve(removed, towers, iterative)
    rankings = rankings or ranking_names([c for c in DEFAULT_RANKINGS if c in scores.columns])
    if iterative and calibration is None:
        raise MopeError("iterative curves re-score the pruned model: give the calibration task the scores came from")
    curves = {**{name: (col, 1) for name, col in rankings.items()},
              **{iterative_name(k): ("mope", k) for k in iterative}}
    metric = metric or default_metric(task)
    dense = evaluate(clip, task)[metric]
    rows = [{"removed": 0.0, "ranking": name, metric: dense, "heads": 0, "groups": 0} for name in curves]
    todo = [(r, name) for r in removed for name in curves]
    time_left = TimeLeft()
    for done, (fraction, name) in enumerate(todo, 1):
        if should_stop and should_stop():
            raise Cancelled(rows)
        budget = Budget(keep=1 - fraction, towers=tuple(towers))
        rows.append(curve_point(clip, scores, task, metric, budget, fraction, name, curves[name], calibration,
                                step_schedule, should_stop))
        if progress:
            progress(done, len(todo), time_left(done, len(todo)), rows)
    df = pd.DataFrame(rows)
    df.attrs.update(metric=metric, scores=scores.attrs.get("fingerprint", ""))
    return df


def _check_curve(removed, towers, iterative) -> list[str]:
    """Each fraction removed in (0, 1], each K of `iterative` >= 1 (mope.rules); the towers, known ones."""
    for name, values in (("removed", removed), ("iterative", iterative)):
        for value in items(values, f"compression_curve: {name}"):
            NUMBERS[name].check(value, f"compression_curve: each of {name}", strict=True)
    return name_list(towers, TOWERS, "compression_curve: towers")


def curve_point(clip: Clip, scores: pd.DataFrame, task: Task, metric: str, budget: Budget, fraction: float, name: str,
                curve: tuple[str, int], calibration: Task | None, step_schedule: str, should_stop) -> dict:
    """One row of the curve; a fraction no plan can reach (e.g. every head of a small tower) is a gap (NaN) with
    the reason in `note`."""
    try:
        pruned = curve_model(clip, scores, budget, *curve, calibration, step_schedule, should_stop)
    except Cancelled:
        raise
    except MopeError as e:
        return {"removed": fraction, "ranking": name, metric: float("nan"), "heads": 0, "groups": 0, "note": str(e)}
    kinds = [u.kind for step in pruned.info["plan"] for u in Plan.from_dict(step).removed]
    return {"removed": fraction, "ranking": name, metric: evaluate(pruned, task)[metric],
            "heads": kinds.count("head"), "groups": kinds.count("neurons")}


def iterative_name(steps: int) -> str:
    return f"MoPE iterative ×{steps}"


def curve_model(clip: Clip, scores: pd.DataFrame, budget: Budget, by: str, steps: int, calibration: Task | None,
                step_schedule: str = "even", should_stop=None) -> Clip:
    """One-shot: the plan of `scores` ranked by `by`; iterative: K steps re-scored with the table's metric."""
    if steps == 1:
        return prune(clip, plan(scores, budget, by=by))
    return prune_model(clip, calibration, budget, scores=scores, by=by, steps=steps, step_schedule=step_schedule,
                       should_stop=should_stop, metric=scores.attrs.get("metric"), baselines=())
