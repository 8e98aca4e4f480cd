"""Plans: which units a budget removes, and the tower sizes before and after. Pure and instant.

Width (heads, neuron groups) is chosen from the rows of kind head / neurons, depth (whole layers)
from the rows of kind layer, each ranked by a score column (MoPE by default; a baseline for
comparison). Sizes are those of each tower's transformer blocks, from the table's params / flops.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd

from .errors import MopeError
from .units import TOWERS, Unit

STRATEGIES = ("uniform", "global")
MEASURES = ("params", "flops")


@dataclass
class Budget:
    """What to remove, per tower.

    keep: fraction of each tower's transformer params (or FLOPs, see measure) kept by width pruning,
      a number for every tower in `towers` or a {tower: fraction} dict.
    heads / neurons: explicit counts removed from every layer (uniform) instead of keep.
    layers: whole layers removed (the lowest-scored ones), a number or {tower: n}.
    strategy: uniform (the same counts in every layer, the paper's layout) or global (the lowest
      scores anywhere, at least `floor` heads and neuron groups left in each layer).
    """

    keep: float | dict[str, float] | None = None
    heads: int | dict[str, int] | None = None
    neurons: int | dict[str, int] | None = None
    layers: int | dict[str, int] | None = None
    strategy: str = "uniform"
    measure: str = "params"
    floor: int = 1
    towers: tuple[str, ...] = ("vision",)

    def per_tower(self, name: str) -> dict[str, float]:
        value = getattr(self, name)
        if value is None:
            return {}
        return {t: v for t, v in value.items()} if isinstance(value, dict) else {t: value for t in self.towers}


@dataclass
class Plan:
    """The units a budget removes, and each tower's transformer params / FLOPs before and after."""

    removed: list[Unit]
    sizes: dict[str, dict[str, int]]
    budget: Budget
    by: str = "mope"
    group_sizes: dict[str, int] = field(default_factory=dict)
    model: str = ""  # fingerprint of the model the scores describe
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"removed": [u.name for u in self.removed], "sizes": self.sizes, "budget": asdict(self.budget),
                "by": self.by, "group_sizes": self.group_sizes, "model": self.model, "notes": self.notes}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        budget = Budget(**{**d["budget"], "towers": tuple(d["budget"]["towers"])})
        return cls([Unit.parse(n) for n in d["removed"]], d["sizes"], budget, d.get("by", "mope"),
                   d.get("group_sizes", {}), d.get("model", ""), d.get("notes", []))

    def summary(self) -> pd.DataFrame:
        rows = []
        for tower, s in self.sizes.items():
            kinds = [u.kind for u in self.removed if u.tower == tower]
            rows.append({"tower": tower, "heads removed": kinds.count("head"),
                         "neuron groups removed": kinds.count("neurons"), "layers removed": kinds.count("layer"),
                         "params before": s["params_before"], "params after": s["params_after"],
                         "GFLOPs before": s["flops_before"] / 1e9, "GFLOPs after": s["flops_after"] / 1e9})
        return pd.DataFrame(rows)


def plan(scores: pd.DataFrame, budget: Budget, by: str = "mope") -> Plan:
    """The units `budget` removes from the model `scores` describes, ranked by column `by` (low goes first)."""
    _check(scores, budget, by)
    removed: list[Unit] = []
    notes: list[str] = []
    for tower in TOWERS:
        rows = scores[scores.tower == tower]
        if rows.empty:
            continue
        width = _width(rows, tower, budget, by, notes)
        if width and len(width) == rows.kind.isin(["head", "neurons"]).sum():
            raise MopeError(f"this budget removes every head and neuron of the {tower} tower: keep more")
        depth = _depth(rows, tower, budget, by)
        removed += width + depth
    sizes = {t: _sizes(scores[scores.tower == t], removed) for t in TOWERS if (scores.tower == t).any()}
    if not removed:
        raise MopeError("this budget removes nothing: lower keep, or ask for heads / neurons / layers to remove")
    return Plan(removed, sizes, budget, by, dict(scores.attrs.get("group_sizes", {})), scores.attrs.get("model", ""), notes)


def _check(scores: pd.DataFrame, budget: Budget, by: str) -> None:
    if by not in scores.columns:
        raise MopeError(f"the scores table has no column '{by}' to rank by; it has {', '.join(scores.columns)}")
    check_budget(budget)


def check_budget(budget: Budget) -> None:
    """The checks that need no scores, so a bad budget fails before any scoring."""
    if budget.strategy not in STRATEGIES:
        raise MopeError(f"unknown strategy '{budget.strategy}'; use uniform or global")
    if budget.measure not in MEASURES:
        raise MopeError(f"unknown measure '{budget.measure}'; use params or flops")
    for tower, keep in budget.per_tower("keep").items():
        if tower not in TOWERS:
            raise MopeError(f"unknown tower '{tower}'; use vision or text")
        if not 0 < keep <= 1:
            raise MopeError(f"keep must be a fraction in (0, 1], got {keep} for {tower}")
    if budget.keep is not None and (budget.heads is not None or budget.neurons is not None):
        raise MopeError("give either keep or explicit heads / neurons counts, not both")
    counts = [v for name in ("heads", "neurons", "layers") for v in budget.per_tower(name).values()]
    if any(v < 0 for v in counts):
        raise MopeError("counts of heads / neurons / layers to remove cannot be negative")
    if budget.keep is None and not any(counts):
        raise MopeError("this budget removes nothing: give keep < 1, or heads / neurons / layers to remove")


def _width(rows: pd.DataFrame, tower: str, budget: Budget, by: str, notes: list[str]) -> list[Unit]:
    keep = budget.per_tower("keep").get(tower)
    explicit = {k: budget.per_tower(n).get(tower) for k, n in (("head", "heads"), ("neurons", "neurons"))}
    if keep is None and all(v is None for v in explicit.values()):
        return []
    width_rows = rows[rows.kind.isin(["head", "neurons"])]
    if width_rows.empty:
        raise MopeError(f"the scores table has no head or neuron rows for the {tower} tower; score them first")
    if keep is not None and budget.strategy == "global":
        return _global(width_rows, tower, keep, budget, by)
    if keep is not None:
        explicit = _uniform_counts(rows, keep, budget.measure)
        notes.append(f"{tower}: uniform removes {explicit['head']} heads and {explicit['neurons']} neuron groups per layer")
    removed = []
    for kind, count in explicit.items():
        if not count:
            continue
        rows_k = width_rows[width_rows.kind == kind].sort_values(["layer", by, "index"], kind="stable")
        sizes = rows_k.groupby("layer").size()
        if (sizes < count).any():
            layer = int(sizes.idxmin())
            raise MopeError(f"cannot remove {count} {kind} units from {tower} layer {layer}: it has {sizes.min()}")
        lowest = rows_k.groupby("layer").head(count)
        removed += [Unit(tower, kind, int(layer), int(i)) for layer, i in zip(lowest["layer"], lowest["index"])]
    return removed


def _uniform_counts(rows: pd.DataFrame, keep: float, measure: str) -> dict[str, int]:
    """Heads and neuron groups removed per layer whose kept size is closest to `keep`, preferring equal fractions."""
    total = _block_total(rows, measure)
    n = {k: int(rows[rows.kind == k].groupby("layer").size().min()) if (rows.kind == k).any() else 0
         for k in ("head", "neurons")}
    unit = {k: rows.loc[rows.kind == k, measure].mean() if n[k] else 0.0 for k in ("head", "neurons")}
    layers = rows.layer.nunique()
    best = None
    for h in range(n["head"] + 1):
        for g in range(n["neurons"] + 1):
            kept = 1 - layers * (h * unit["head"] + g * unit["neurons"]) / total
            balance = abs(h / max(n["head"], 1) - g / max(n["neurons"], 1)) if n["head"] and n["neurons"] else 0
            cost = abs(kept - keep) + 0.1 * balance
            if best is None or cost < best[0]:
                best = (cost, {"head": h, "neurons": g})
    return best[1]


def _global(rows: pd.DataFrame, tower: str, keep: float, budget: Budget, by: str) -> list[Unit]:
    """Lowest scores anywhere in the tower until the kept size reaches keep; a floor per layer and kind."""
    target = (1 - keep) * _block_total(rows, budget.measure)
    left = {key: len(g) for key, g in rows.groupby(["layer", "kind"])}
    removed, amount = [], 0.0
    for r in rows.sort_values([by, "layer", "kind", "index"], kind="stable").itertuples():
        cost = getattr(r, budget.measure)
        if amount + cost / 2 > target:
            break
        if left[(r.layer, r.kind)] <= budget.floor:
            continue
        left[(r.layer, r.kind)] -= 1
        removed.append(Unit(tower, r.kind, int(r.layer), int(r.index)))
        amount += cost
    return removed


def _depth(rows: pd.DataFrame, tower: str, budget: Budget, by: str) -> list[Unit]:
    count = budget.per_tower("layers").get(tower)
    if not count:
        return []
    layer_rows = rows[rows.kind == "layer"]
    if layer_rows.empty:
        raise MopeError(f"the scores table has no layer rows for the {tower} tower; score layers first")
    if count >= len(layer_rows):
        raise MopeError(f"cannot remove {count} of the {len(layer_rows)} {tower} layers: at least one must stay")
    lowest = layer_rows.sort_values([by, "layer"], kind="stable").head(count)
    return [Unit(tower, "layer", int(layer)) for layer in lowest["layer"]]


def _block_total(rows: pd.DataFrame, measure: str) -> float:
    """A tower's transformer size: its layer rows, or the sum of its width units when layers were not scored."""
    layer_rows = rows[rows.kind == "layer"]
    return float(layer_rows[measure].sum() if not layer_rows.empty else rows[rows.kind.isin(["head", "neurons"])][measure].sum())


def _sizes(rows: pd.DataFrame, removed: list[Unit]) -> dict[str, int]:
    """Params and FLOPs of the tower's transformer before and after removing `removed`."""
    gone = {u.name for u in removed}
    dropped_layers = {u.layer for u in removed if u.kind == "layer" and u.tower == rows.tower.iloc[0]}
    out = {}
    for measure in MEASURES:
        before = _block_total(rows, measure)
        width = rows[rows.kind.isin(["head", "neurons"]) & rows.unit.isin(gone) & ~rows.layer.isin(dropped_layers)]
        layer_rows = rows[rows.kind == "layer"]
        after = before - width[measure].sum() - layer_rows[layer_rows.layer.isin(dropped_layers)][measure].sum()
        out[f"{measure}_before"], out[f"{measure}_after"] = int(before), int(after)
    return out
