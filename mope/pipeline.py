"""The pruning pipeline: scores → plan → surgery, in the paper's order (width, re-score, depth)."""
from __future__ import annotations

from dataclasses import replace

from .clip import Clip
from .errors import MopeError
from .plan import check_budget, plan
from .scoring import score
from .surgery import prune


def prune_model(clip: Clip, task, budget, schedule: str = "width-then-depth", scores=None, by: str = "mope",
                progress=None, should_stop=None, **score_kw) -> Clip:
    """Width first (heads and neuron groups ranked by MoPE), then depth: the layers are re-scored on the
    width-pruned model and the lowest removed — the paper's order. schedule="joint" plans both at once
    from the original scores.
    """
    check_budget(budget)
    if schedule not in ("width-then-depth", "joint"):
        raise MopeError(f"unknown schedule '{schedule}'; use width-then-depth or joint")
    towers = sorted(set(budget.towers) | set(budget.per_tower("keep")) | set(budget.per_tower("layers")))
    kinds = ["head", "neurons"] + (["layer"] if schedule == "joint" else [])
    if scores is None:
        scores = score(clip, task, towers=towers, units=kinds, progress=progress, should_stop=should_stop, **score_kw)
    if schedule == "joint":
        return prune(clip, plan(scores, budget, by=by))
    width = replace(budget, layers=None)
    has_width = bool(width.per_tower("keep") or width.per_tower("heads") or width.per_tower("neurons"))
    pruned = prune(clip, plan(scores, width, by=by)) if has_width else clip
    if budget.per_tower("layers"):
        layer_kw = {**score_kw, "baselines": ()}
        layer_scores = score(pruned, task, towers=towers, units=["layer"], progress=progress,
                             should_stop=should_stop, **layer_kw)
        depth = replace(budget, keep=None, heads=None, neurons=None)
        pruned = prune(pruned, plan(layer_scores, depth, by="mope"))
    pruned.info["scores_fingerprint"] = scores.attrs.get("fingerprint", "")
    return pruned
