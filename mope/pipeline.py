"""The pruning pipeline: scores → plan → surgery, in the paper's order (width, re-score, depth)."""
from __future__ import annotations

import itertools
import math
from dataclasses import replace

import torch

from .blocks import by_layer
from .clip import Clip
from .errors import MopeError
from .evaluation import default_metric
from .planning import Budget, check_budget, plan
from .rules import NUMBERS, arguments, count_or_fraction
from .scoring import MIN_ROWS, FastScorer, pass_tokens, score, unit_table
from .stability import measured_stability
from .surgery import prune
from .units import Unit, check_group_size, enumerate_units, tower_blocks, unit_flops

STEP_SCHEDULES = ("even", "geometric")
# rescore_images="auto": all re-scorings together cost at most this share of one full sweep, so K steps cost under
# 2× one sweep with room for what the FLOPs leave out (at 1.0, ×4 measured 1.81–1.93× on the demo model)
RESCORE_WORK = 0.8


def prune_model(clip: Clip, task, budget, schedule: str = "width-then-depth", scores=None, by: str = "mope",
                progress=None, should_stop=None, steps: int = 1, step_schedule: str = "even",
                rescore_margin: float | None = None, rescore_images: int | float | str | None = "auto", **score_kw) -> Clip:
    """Width first (heads and neuron groups ranked by MoPE), then depth: the layers are re-scored on the
    width-pruned model and the lowest removed — the paper's order. schedule="joint" plans both at once
    from the original scores.

    steps=K > 1 reaches the width budget in K steps (iterative MoPE), re-scoring the remaining units on
    the already-pruned model before each step: one-shot scores describe the unpruned model, which at high
    compression no longer resembles the model being pruned. step_schedule: even (equal shares of the
    removed size) or geometric (equal ratios: more early, when scores are cheapest and most reliable).
    rescore_margin=None re-scores every remaining unit before steps 2 … K; a number M >= 1 re-scores only the
    units a plan of M × the removal still to come would take by their latest scores (cheaper; only they can go
    at that step; on the demo model it cost accuracy, see README).
    rescore_images: the calibration images those re-scorings run, the first in anytime scoring's order on the
    model being re-scored (rescore_sample): "auto" (as many as an equal share of one full sweep's work buys on the
    model being re-scored, auto_rescore_count: smaller models get more), a count, a fraction of the calibration set
    (at least 16 images), or None (all).
    Each re-scoring is an exact sweep on its images; the first table is the given or full one.
    """
    check_budget(budget)
    if schedule not in ("width-then-depth", "joint"):
        raise MopeError(f"unknown schedule '{schedule}'; use width-then-depth or joint")
    check_steps(steps, step_schedule)
    check_rescore_margin(rescore_margin)
    check_rescore_images(rescore_images)
    if steps > 1 and schedule == "joint":
        raise MopeError("iterative pruning (steps > 1) re-scores between width steps: use schedule width-then-depth")
    towers = sorted(set(budget.towers) | set(budget.per_tower("keep")) | set(budget.per_tower("layers")))
    kinds = ["head", "neurons"] + (["layer"] if schedule == "joint" else [])
    if scores is None:
        scores = score(clip, task, towers=towers, units=kinds, progress=progress, should_stop=should_stop, **score_kw)
    if schedule == "joint":
        return prune(clip, plan(scores, budget, by=by))
    width = replace(budget, layers=None)
    has_width = bool(width.per_tower("keep") or width.per_tower("heads") or width.per_tower("neurons"))
    if has_width and steps > 1:
        pruned = _iterative_width(clip, task, width, scores, by, steps, step_schedule, progress, should_stop, score_kw,
                                  rescore_margin, rescore_images)
    else:
        pruned = prune(clip, measured_stability(plan(scores, width, by=by), scores)) if has_width else clip
    if budget.per_tower("layers"):
        layer_kw = {**score_kw, "baselines": ()}
        layer_scores = score(pruned, task, towers=towers, units=["layer"], progress=progress,
                             should_stop=should_stop, **layer_kw)
        depth = replace(budget, keep=None, heads=None, neurons=None)
        pruned = prune(pruned, plan(layer_scores, depth, by="mope"))
    pruned.info["scores_fingerprint"] = scores.attrs.get("fingerprint", "")
    return pruned


def check_steps(steps, step_schedule: str) -> None:
    NUMBERS["steps"].check(steps, "mope.prune_model: steps", strict=True)  # 1 = one-shot
    if step_schedule not in STEP_SCHEDULES:
        raise MopeError(f"unknown step schedule '{step_schedule}'; use {' or '.join(STEP_SCHEDULES)}")


def check_rescore_margin(margin) -> None:
    """None (re-score every unit) or a number >= 1 (mope.rules)."""
    arguments("mope.prune_model", rescore_margin=margin)


def check_rescore_images(images) -> None:
    """None (every image), "auto", a count >= 1 or a fraction in (0, 1] (mope.rules)."""
    if images is not None and images != "auto":
        count_or_fraction(images, "mope.prune_model: rescore_images", strict=True, also=", 'auto' or None")


def rescore_count(images: int | float | None, total: int) -> int:
    """How many calibration images a re-scoring runs: a count (at most all), a fraction (at least MIN_ROWS), all."""
    if images is None:
        return total
    if isinstance(images, float):
        return min(total, max(MIN_ROWS, math.ceil(images * total)))
    return min(total, images)


def sweep_flops(clip: Clip, group_sizes: dict[str, int]) -> int:
    """Forward FLOPs per calibration image of an exact sweep of the heads and neuron groups of the towers in
    `group_sizes`: each unit re-runs the blocks from its layer on (the fast path's cost; the unablated pass and
    the metric left out)."""
    total = 0
    for tower, group_size in group_sizes.items():
        layers = range(len(tower_blocks(clip.model, tower)))
        block = [unit_flops(clip.model, Unit(tower, "layer", layer), group_size) for layer in layers]
        tail = list(itertools.accumulate(reversed(block)))[::-1]  # tail[l]: the blocks from layer l on
        units = enumerate_units(clip.model, [tower], ["head", "neurons"], {tower: group_size})
        total += sum(tail[u.layer] for u in units)
    return total


def auto_rescore_count(original: Clip, pruned: Clip, towers, group_size: int | None, total: int, steps: int) -> int:
    """rescore_images="auto": the images one re-scoring of `pruned` runs so that the K − 1 re-scorings together
    cost at most RESCORE_WORK full sweeps of the original model (each an equal share; at least MIN_ROWS). The
    pruned models are smaller, so later steps, where the model has changed most, get more images."""
    sizes = check_group_size(original.model, towers, group_size)  # the original's: a pruned FFN is narrower
    share = RESCORE_WORK * sweep_flops(original, sizes) * total / max(steps - 1, 1)
    return min(total, max(MIN_ROWS, math.floor(share / max(sweep_flops(pruned, sizes), 1))))


def step_targets(keep: float, steps: int, step_schedule: str = "even") -> list[float]:
    """The fraction of the original size kept after each of the K steps; the last one is `keep`."""
    check_steps(steps, step_schedule)
    if step_schedule == "geometric":
        return [keep ** (k / steps) for k in range(1, steps + 1)]
    return [1 - (1 - keep) * k / steps for k in range(1, steps + 1)]


def step_counts(count: int, steps: int, shares: list[float] | None = None) -> list[int]:
    """An explicit per-layer count split into K steps: as evenly as whole numbers allow, or by `shares` (the share
    of the whole count removed after each step, the last 1; see removal_shares)."""
    if shares is None:
        return [round(count * k / steps) - round(count * (k - 1) / steps) for k in range(1, steps + 1)]
    done = [0] + [round(count * s) for s in shares[:-1]] + [count]
    return [b - a for a, b in zip(done, done[1:])]


def removal_shares(keep: float, steps: int, step_schedule: str = "even") -> list[float] | None:
    """The share of a kept-fraction budget's removal done after each of the K steps, as step_targets schedules it;
    None for even (equal shares: step_counts' whole-number split)."""
    if step_schedule == "even":
        return None
    return [(1 - t) / (1 - keep) for t in step_targets(keep, steps, step_schedule)]


def uniform_layout(scores, width: Budget, by: str) -> tuple[Budget, dict]:
    """A uniform budget's kept fractions as the heads and neuron groups per layer the one-shot plan removes
    (explicit counts), and those counts per tower. Iterative steps share these counts out, so the model ends with
    the one-shot plan's layout and re-scoring decides only which units go; each step choosing its own split from its
    share would not (on the demo model, x2 at 25% removed twice the heads of one-shot)."""
    fractions = width.per_tower("keep")
    if width.strategy != "uniform" or not fractions:
        return width, {}
    removed = plan(scores, replace(width, heads=None, neurons=None, towers=tuple(sorted(fractions))), by=by).removed
    layout = {}
    for t in fractions:
        layers = scores.loc[scores["tower"] == t, "layer"].nunique()
        layout[t] = {kind: sum(u.tower == t and u.kind == unit for u in removed) // layers
                     for kind, unit in (("heads", "head"), ("neurons", "neurons"))}
    counts = {kind: {**width.per_tower(kind), **{t: c[kind] for t, c in layout.items()}} for kind in ("heads", "neurons")}
    return replace(width, keep=None, heads=counts["heads"], neurons=counts["neurons"]), layout


def _step_budget(width: Budget, k: int, steps: int, step_schedule: str, left: dict, to_come: bool = False,
                 shares: dict | None = None) -> Budget | None:
    """Step k's budget on the current model: `left[t]` is the fraction of its size that reaches the target
    (to_come: the budget of steps k … K together); shares[t]: how tower t's explicit counts are split (step_counts)."""
    keep = {t: f for t, f in left.items() if f < 1.0}
    last = steps if to_come else k + 1
    shares = shares or {}
    counts = {name: {t: sum(step_counts(int(c), steps, shares.get(t))[k:last]) for t, c in width.per_tower(name).items()}
              for name in ("heads", "neurons")}
    counts = {name: {t: c for t, c in by_tower.items() if c} for name, by_tower in counts.items()}
    if not keep and not any(counts.values()):
        return None
    return replace(width, keep=keep or None, heads=counts["heads"] or None, neurons=counts["neurons"] or None,
                   towers=tuple(sorted(set(keep) | set(counts["heads"]) | set(counts["neurons"]))))


def plan_total(scores, tower: str, measure: str) -> float:
    """A tower's size as `plan` measures keep: its layer rows, or its width rows when layers were not scored."""
    rows = scores[scores["tower"] == tower]
    layers = rows[rows["kind"] == "layer"]
    return float((layers if len(layers) else rows[rows["kind"].isin(["head", "neurons"])])[measure].sum())


def _iterative_width(clip, task, width: Budget, scores, by, steps, step_schedule, progress, should_stop, score_kw,
                     margin: float | None, images: int | float | None):
    """K width steps, re-scoring heads and neuron groups on the pruned model before each: those a plan of
    `margin` × the removal still to come would take by their latest scores (all of them when margin is None)."""
    towers, rescore_kw = _iterative_settings(task, width, scores, by, steps, score_kw)
    targets = {t: step_targets(f, steps, step_schedule) for t, f in width.per_tower("keep").items()}
    shares = {t: removal_shares(f, steps, step_schedule) for t, f in width.per_tower("keep").items()}
    width, layout = uniform_layout(scores, width, by)  # uniform: the one-shot layout's counts, shared out
    measure, fractions = width.measure, width.per_tower("keep")
    start = {t: plan_total(scores, t, measure) for t in fractions}
    gone = dict.fromkeys(fractions, 0.0)
    pruned, record, latest, ranked, described = clip, [], scores, scores, clip.info.get("structure")
    scored, classes = clip, None
    used = {"images": "all", "units": int(scores["kind"].isin(["head", "neurons"]).sum())}
    for k in range(steps):
        if k and pruned is not scored:  # after a skipped step the latest scores still describe the model
            scored, carried, only = pruned, None, None
            if margin is not None:  # the pool: only these are re-scored (the default re-scores every unit)
                carried = _carried(pruned, towers, latest, described, by)
                to_come = _step_budget(width, k, steps, step_schedule, _left(carried, start, gone, fractions, measure),
                                       to_come=True, shares=shares)
                only = _pool(carried, to_come, margin, by)
            count = (auto_rescore_count(clip, pruned, towers, rescore_kw.get("group_size"), len(task), steps)
                     if images == "auto" else rescore_count(images, len(task)))
            sample, classes = rescore_sample(pruned, task, count, rescore_kw,
                                             classes if "text" not in towers else None)  # text unpruned: unchanged
            fresh = score(pruned, task if sample is None else task.at(sample), towers=towers, units=["head", "neurons"],
                          progress=progress, should_stop=should_stop, only=only, classifier=classes, **rescore_kw)
            used = {"images": "all" if sample is None else sample.tolist(), "units": len(fresh)}
            (latest, ranked), described = _merged(carried, fresh, by, only), pruned.info.get("structure")
        left = _left(ranked, start, gone, {t: targets[t][k] for t in fractions}, measure)
        budget = _step_budget(width, k, steps, step_schedule, left, shares=shares)
        step_plan = plan(ranked, budget, by=by, empty_ok=True) if budget is not None else None
        if step_plan is None or not step_plan.removed:
            record.append({"step": k + 1, "skipped": "nothing left to remove at this step", "scored_on": used})
            continue
        step_plan = measured_stability(step_plan, ranked)
        for t, size in step_plan.sizes.items():
            gone[t] = gone.get(t, 0.0) + size[f"{measure}_before"] - size[f"{measure}_after"]
        record.append({**_step_record(k, pruned, ranked, step_plan, by), "scored_on": used})
        pruned = prune(pruned, step_plan)
    pruned.info["iterative"] = {"steps": steps, "step_schedule": step_schedule, "by": by, "record": record,
                                "rescore_margin": margin, "rescore_images": images, "targets": targets,
                                "layout": layout}
    return pruned


def rescore_sample(clip: Clip, task, count: int, score_kw: dict,
                   classifier: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Task positions (in task order) of the first `count` calibration images in anytime scoring's order on `clip`
    (FastScorer.image_order: the highest unablated loss first; for a hit metric such as acc1, those nearest the
    decision), and the zero-shot class embeddings that took (`classifier` when given; for score(classifier=), so the
    sweep on those images does not embed the prompts again); (None, classifier): every image."""
    if count >= len(task):
        return None, classifier
    scorer = FastScorer(clip, task, score_kw.get("metric") or default_metric(task), {}, score_kw.get("precision", "fp32"),
                        pass_tokens(clip, batch_tokens=score_kw.get("batch_tokens"), max_memory=score_kw.get("max_memory")),
                        score_kw.get("chunk"), classifier)
    with torch.inference_mode(), scorer.autocast():
        order = scorer.image_order("vision", scorer.image_losses("vision"))
        return order[:count].sort().values, scorer.classifier()


def _iterative_settings(task, width: Budget, scores, by: str, steps: int, score_kw: dict) -> tuple[list, dict]:
    """The towers an iterative plan prunes and the settings its re-scoring uses (the first table's), checked."""
    if task is None:
        raise MopeError("iterative pruning re-scores the pruned model: give calibration data (--data)")
    towers = sorted(set(width.towers) | set(width.per_tower("keep")) | set(width.per_tower("heads"))
                    | set(width.per_tower("neurons")))
    prunable = int(scores[scores["tower"].isin(towers)]["kind"].isin(["head", "neurons"]).sum())
    if steps > prunable:
        raise MopeError(f"{steps} steps but only {prunable} prunable heads and neuron groups: use fewer steps")
    group_sizes = set(scores.attrs.get("group_sizes", {}).values())
    if len(group_sizes) > 1:
        raise MopeError("the towers were scored with different neuron-group sizes: prune them one at a time")
    return towers, {**score_kw, "baselines": () if by == "mope" else (by,),
                    "metric": score_kw.get("metric") or scores.attrs.get("metric"),  # the first table's metric
                    "group_size": group_sizes.pop() if group_sizes else score_kw.get("group_size")}


def _left(table, start: dict, gone: dict, fractions: dict, measure: str) -> dict:
    """Per tower, the fraction of the current model's size that the final target keeps."""
    return {t: 1 - (start[t] - gone[t] - f * start[t]) / plan_total(table, t, measure) for t, f in fractions.items()}


def _carried(pruned: Clip, towers, latest, structure_before: dict | None, by: str):
    """The pruned model's heads and neuron groups with their latest scores (made on an earlier, larger model),
    matched through the source model's indices."""
    group_sizes = dict(latest.attrs.get("group_sizes", {}))
    table = unit_table(pruned, towers, ["head", "neurons"], group_size=next(iter(group_sizes.values()), None),
                       baselines=())
    before = latest.set_axis(_source_names(latest["unit"], structure_before, group_sizes))
    after = _source_names(table["unit"], pruned.info.get("structure"), group_sizes)
    for column in dict.fromkeys([by, "mope", "mope_loss"]):
        if column in before.columns:
            table[column] = before[column].reindex(after).to_numpy()
    table.attrs.update(latest.attrs, model=table.attrs["model"])
    return table


def _source_names(names, structure: dict | None, group_sizes: dict[str, int]) -> list[str]:
    return [source_unit(Unit.parse(n), structure, group_sizes).name for n in names]


def _pool(carried, to_come: Budget | None, margin: float, by: str) -> list[str] | None:
    """The units worth re-scoring: those a plan of `margin` × the removal still to come takes by their latest
    scores; None (re-score all) when that plan would take (nearly) everything."""
    if to_come is None:
        return None
    wider = replace(to_come, keep={t: max(0.0, 1 - margin * (1 - f)) for t, f in to_come.per_tower("keep").items()}
                    or None,
                    heads={t: math.ceil(margin * c) for t, c in to_come.per_tower("heads").items()} or None,
                    neurons={t: math.ceil(margin * c) for t, c in to_come.per_tower("neurons").items()} or None)
    try:
        return [u.name for u in plan(carried, wider, by=by).removed]
    except MopeError:  # the wider plan takes a whole tower or more than there is: re-score everything
        return None


def _merged(carried, fresh, by: str, only: list[str] | None):
    """(latest, ranked): the carried table with the re-scored units' new scores; in `ranked` the units that were
    not re-scored score +inf (kept at this step), so a step removes only units scored on the current model."""
    if only is None:
        return fresh, fresh
    columns = [c for c in dict.fromkeys([by, "mope", "mope_loss"]) if c in fresh.columns]
    latest = carried.copy()
    for column in [c for c in columns if c not in latest.columns]:
        latest[column] = math.nan
    new = fresh.set_index("unit")[columns]
    hit = latest["unit"].isin(new.index).to_numpy()
    latest.loc[hit, columns] = new.loc[latest.loc[hit, "unit"], columns].to_numpy()
    ranked = latest.copy()
    ranked.loc[~hit, columns] = math.inf
    for table in (latest, ranked):
        table.attrs.update(fresh.attrs)  # the fresh table's fingerprint: its per-image results for stability
    return latest, ranked


def _step_record(k: int, model: Clip, scores, step_plan, by: str) -> dict:
    """What step k removed, named in the source model's indices, with the scores it was ranked by."""
    removed = {u.name for u in step_plan.removed}
    rows = scores[scores["unit"].isin(removed)]
    structure = model.info.get("structure")
    group_sizes = step_plan.group_sizes
    return {"step": k + 1, "scores_fingerprint": scores.attrs.get("fingerprint", ""),
            "kept_after": {t: s[f"{step_plan.budget.measure}_after"] / max(s[f"{step_plan.budget.measure}_before"], 1)
                           for t, s in step_plan.sizes.items()},
            "removed": {source_unit(Unit.parse(u), structure, group_sizes).name: float(v)
                        for u, v in zip(rows["unit"], rows[by])}}


def source_unit(unit: Unit, structure: dict | None, group_sizes: dict[str, int]) -> Unit:
    """A unit of a pruned model named in the indices of the unpruned source model."""
    if structure is None or unit.tower not in structure:
        return unit
    spec = structure[unit.tower]
    layer = spec["layers"][unit.layer]

    if unit.kind == "head":
        return Unit(unit.tower, "head", layer, by_layer(spec["heads"], layer)[unit.index])
    if unit.kind == "neurons":
        if unit.tower not in group_sizes:  # a guess (1) would name other neurons than the group held
            raise MopeError(f"cannot name the {unit.tower} neuron group {unit.name} in the source model's indices "
                            "without its group size: pass the scores' attrs['group_sizes']")
        g = group_sizes[unit.tower]
        return Unit(unit.tower, "neurons", layer, by_layer(spec["neurons"], layer)[unit.index * g] // g)
    return Unit(unit.tower, unit.kind, layer, unit.index)
