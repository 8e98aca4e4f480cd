"""Accuracy vs compression: prune by several rankings at several budgets and evaluate each, without distillation.

This is the study behind the paper's claim that MoPE ranks modules better than magnitude or random
choice: the same scores table, the same budgets, only the ranking column changes.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import pandas as pd

from .clip import Clip
from .data.tasks import Task
from .evaluate import default_metric, evaluate
from .plan import Budget, plan
from .scoring import Cancelled
from .surgery import prune

NAMES = {"mope": "MoPE", "magnitude": "magnitude", "random": "random", "taylor": "Taylor"}  # column → shown name
RANKINGS = {NAMES[column]: column for column in ("mope", "magnitude", "random")}


def compression_curve(clip: Clip, scores: pd.DataFrame, task: Task, removed: Sequence[float] = (0.25, 0.5, 0.75),
                      rankings: dict[str, str] | None = None, towers: Sequence[str] = ("vision",),
                      metric: str | None = None, progress: Callable | None = None,
                      should_stop: Callable[[], bool] | None = None) -> pd.DataFrame:
    """One row per (fraction of head+FFN params removed, ranking): the metric of the physically pruned model.

    rankings maps a display name to a column of `scores` (low scores are removed first). Row 0 of each
    ranking is the unpruned model. progress(done, total, eta, rows) after each evaluation.
    """
    rankings = rankings or {name: col for name, col in RANKINGS.items() if col in scores.columns}
    metric = metric or default_metric(task)
    dense = evaluate(clip, task)[metric]
    rows = [{"removed": 0.0, "ranking": name, metric: dense, "heads": 0, "groups": 0} for name in rankings]
    todo = [(r, name) for r in removed for name in rankings]
    start = time.time()
    for done, (fraction, name) in enumerate(todo, 1):
        if should_stop and should_stop():
            raise Cancelled(rows)
        p = plan(scores, Budget(keep=1 - fraction, towers=tuple(towers)), by=rankings[name])
        kinds = [u.kind for u in p.removed]
        rows.append({"removed": fraction, "ranking": name, metric: evaluate(prune(clip, p), task)[metric],
                     "heads": kinds.count("head"), "groups": kinds.count("neurons")})
        if progress:
            progress(done, len(todo), (time.time() - start) / done * (len(todo) - done), rows)
    df = pd.DataFrame(rows)
    df.attrs.update(metric=metric, scores=scores.attrs.get("fingerprint", ""))
    return df
