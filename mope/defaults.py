"""Every default in one place, read from the library itself: the CLI's options, the job kinds' params
and the app's controls take their defaults from here, so none of them can drift from the library.

`distill()` is DistillConfig's fields; `score()`, `prune()` and `study()` are the keyword defaults of
`scoring.score`, `pipeline.prune_model` (+ `plan.Budget`'s fields) and `study.compression_curve`.
The sizes of data sets have no library signature to live in, so they live here.
"""
from __future__ import annotations

import inspect
import typing
from dataclasses import MISSING, asdict, fields
from typing import Any, Callable

from . import evaluation, pipeline, scoring
from .distill import DistillConfig
from .planning import Budget
from .study import DEFAULT_RANKINGS, compression_curve

DATA = "shapes"       # data spec when none is given (the built-in shapes world)
CALIBRATION_N = 256   # calibration images for scoring and re-scoring
EVAL_N = 500          # held-out images for an evaluation
KEEP = 0.5            # the keep fraction offered first (a prune job's `keep`, the app's vision slider)
QUICK_DISTILL_STEPS = 300  # the app's distillation: shorter than DistillConfig.steps, a curve within minutes on a CPU


def keyword_defaults(fn: Callable) -> dict[str, Any]:
    """The parameters of `fn` that have a default, with it."""
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def distill() -> dict[str, Any]:
    """DistillConfig's defaults (steps, lr, loss weights …)."""
    return asdict(DistillConfig())


def distill_types() -> dict[str, type]:
    """The type of each DistillConfig field (int for `int | None`), to parse it from text."""
    hints = typing.get_type_hints(DistillConfig)
    return {f.name: next((t for t in typing.get_args(hints[f.name]) if t is not type(None)), hints[f.name])
            for f in fields(DistillConfig)}


def evaluate() -> dict[str, Any]:
    """evaluation.evaluate's defaults (batch_size)."""
    return keyword_defaults(evaluation.evaluate)


def score() -> dict[str, Any]:
    """scoring.score's defaults (towers, units, metric, impl, group_size, precision …)."""
    return keyword_defaults(scoring.score)


def prune() -> dict[str, Any]:
    """prune_model's defaults (by, steps, step_schedule …) and Budget's (strategy, measure, towers …)."""
    budget = {f.name: f.default for f in fields(Budget) if f.default is not MISSING}
    return {**budget, **keyword_defaults(pipeline.prune_model)}


def study() -> dict[str, Any]:
    """compression_curve's defaults (removed fractions, rankings, towers, iterative …)."""
    return {**keyword_defaults(compression_curve), "rankings": DEFAULT_RANKINGS}
