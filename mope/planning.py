"""Plans: which units a budget removes, and the tower sizes before and after. Pure and instant.

Width (heads, neuron groups) is chosen from the rows of kind head / neurons, depth (whole layers)
from the rows of kind layer, each ranked by a score column (MoPE by default; a baseline for
comparison). Sizes are those of each tower's transformer blocks, from the table's params / flops.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from . import anytime
from .errors import MopeError
from .ranking import rank_units
from .rules import NUMBERS, arguments, name_list
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

    def __post_init__(self):
        if isinstance(self.towers, str):  # Budget(towers="vision"): one tower (or comma-separated towers)
            self.towers = tuple(name_list(self.towers, TOWERS, "Budget: towers"))

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
    stability: dict | None = None  # mope.stability.plan_stability's result, when measured
    ties: int = 0  # removed units that scored the same `by` as a unit kept in their place: the tie-break chose

    def to_dict(self) -> dict:
        return {"removed": [u.name for u in self.removed], "sizes": self.sizes, "budget": asdict(self.budget),
                "by": self.by, "group_sizes": self.group_sizes, "model": self.model, "notes": self.notes,
                "stability": self.stability, "ties": self.ties}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        budget = Budget(**{**d["budget"], "towers": tuple(d["budget"]["towers"])})
        return cls([Unit.parse(n) for n in d["removed"]], d["sizes"], budget, d.get("by", "mope"),
                   d.get("group_sizes", {}), d.get("model", ""), d.get("notes", []), d.get("stability"),
                   d.get("ties", 0))

    def summary(self) -> pd.DataFrame:
        rows = []
        for tower, s in self.sizes.items():
            kinds = [u.kind for u in self.removed if u.tower == tower]
            rows.append({"tower": tower, "heads removed": kinds.count("head"),
                         "neuron groups removed": kinds.count("neurons"), "layers removed": kinds.count("layer"),
                         "params before": s["params_before"], "params after": s["params_after"],
                         "GFLOPs before": s["flops_before"] / 1e9, "GFLOPs after": s["flops_after"] / 1e9})
        return pd.DataFrame(rows)


def plan(scores: pd.DataFrame, budget: Budget, by: str = "mope", empty_ok: bool = False) -> Plan:
    """The units `budget` removes from the model `scores` describes, ranked by column `by` (low goes first).
    A budget that removes nothing is an error unless empty_ok (an iterative step whose share rounds to nothing)."""
    _check(scores, budget, by)
    removed: list[Unit] = []
    notes: list[str] = []
    sizes = {}
    ties = 0
    for tower, df in scores.groupby("tower", sort=False):
        rows = _Rows.of(df, tower, by)
        width = _width(rows, budget, notes)
        if width and len(width) == int(rows.width_mask().sum()):
            raise MopeError(f"this budget removes every head and neuron of the {tower} tower: keep more")
        _check_heads_left(rows, width)
        tower_removed = width + _depth(rows, budget)
        sizes[tower] = _sizes(rows, tower_removed)
        removed += tower_removed
        ties += _tied(rows, tower_removed, budget.strategy == "global" and budget.per_tower("keep").get(tower) is not None)
    if not removed and not empty_ok:
        raise MopeError("this budget removes nothing: lower keep, or ask for heads / neurons / layers to remove")
    unfinished = anytime.note(scores)
    if unfinished:
        notes.append(unfinished)
    if ties:
        breaker = "the loss's increase (mope_loss)" if by == "mope" and "mope_loss" in scores.columns else "unit order"
        notes.append(f"ties: {ties} removed unit(s) scored the same {by} as a unit kept in their place; "
                     f"{breaker} decided (the rank column)")
    return Plan(removed, sizes, budget, by, dict(scores.attrs.get("group_sizes", {})), scores.attrs.get("model", ""),
                notes, ties=ties)


def _check_heads_left(rows: "_Rows", width: list[Unit]) -> None:
    """A tower without any head cannot mix its tokens (the class / end token sees only itself): refused."""
    heads = int((rows.kind == "head").sum())
    if heads and sum(u.kind == "head" for u in width) == heads:
        raise MopeError(f"this budget removes every head of the {rows.tower} tower ({heads} of {heads}): "
                        "its tokens could no longer see each other; remove fewer heads per layer")


@dataclass
class _Rows:
    """One tower's rows as numpy arrays: filtering a DataFrame per step would cost more than the plan."""

    tower: str
    kind: np.ndarray
    layer: np.ndarray
    index: np.ndarray
    score: np.ndarray  # what the plan sorts by, low goes first: -rank for MoPE (ties broken, ranking.py), else `by`
    value: np.ndarray  # the column itself, to tell where ties decided
    params: np.ndarray
    flops: np.ndarray

    @classmethod
    def of(cls, df: pd.DataFrame, tower: str, by: str) -> "_Rows":
        value = df[by].to_numpy(dtype=float)
        score = -rank_units(df).to_numpy(dtype=float) if by == "mope" and df["mope"].notna().all() else value
        return cls(tower, df["kind"].to_numpy(), df["layer"].to_numpy(), df["index"].to_numpy(), score, value,
                   df["params"].to_numpy(dtype=float), df["flops"].to_numpy(dtype=float))

    def measure(self, name: str) -> np.ndarray:
        return self.params if name == "params" else self.flops

    def width_mask(self) -> np.ndarray:
        return (self.kind == "head") | (self.kind == "neurons")

    def total(self, measure: str) -> float:
        """The tower's transformer size: its layer rows, or its width units when layers were not scored."""
        layers = self.kind == "layer"
        return float(self.measure(measure)[layers if layers.any() else self.width_mask()].sum())

    def unit(self, i: int) -> Unit:
        return Unit(self.tower, str(self.kind[i]), int(self.layer[i]), int(self.index[i]) if self.kind[i] != "layer" else 0)


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
    _check_numbers(budget)
    if budget.keep is not None and (budget.heads is not None or budget.neurons is not None):
        raise MopeError("give either keep or explicit heads / neurons counts, not both")
    counts = [v for name in ("heads", "neurons", "layers") for v in budget.per_tower(name).values()]
    if budget.keep is None and not any(counts):
        raise MopeError("this budget removes nothing: give keep < 1, or heads / neurons / layers to remove")


def _check_numbers(budget: Budget) -> None:
    """towers a non-empty list of known towers; keep, the counts and floor by the CLI's rules (mope.rules)."""
    name_list(budget.towers, TOWERS, "Budget: towers")
    arguments("Budget", floor=budget.floor)
    for name in ("keep", "heads", "neurons", "layers"):
        value = getattr(budget, name)
        if isinstance(value, dict):
            name_list(list(value), TOWERS, f"Budget: the towers of {name}")
        for tower, v in budget.per_tower(name).items():
            NUMBERS[name].check(v, f"Budget: {name} ({tower})", strict=True)


def _width(rows: _Rows, budget: Budget, notes: list[str]) -> list[Unit]:
    tower = rows.tower
    keep = budget.per_tower("keep").get(tower)
    explicit = {k: budget.per_tower(n).get(tower) for k, n in (("head", "heads"), ("neurons", "neurons"))}
    if keep is None and all(v is None for v in explicit.values()):
        return []
    if not rows.width_mask().any():
        raise MopeError(f"the scores table has no head or neuron rows for the {tower} tower; score them first")
    if keep is not None and budget.strategy == "global":
        return _global(rows, keep, budget)
    if keep is not None:
        explicit = _uniform_counts(rows, keep, budget.measure)
        notes.append(f"{tower}: uniform removes {explicit['head']} heads and {explicit['neurons']} neuron groups per layer")
    removed = []
    for kind, count in explicit.items():
        if count:
            removed += _lowest_per_layer(rows, kind, count)
    return removed


def _lowest_per_layer(rows: _Rows, kind: str, count: int) -> list[Unit]:
    """The `count` lowest-scored units of `kind` in every layer."""
    idx = np.flatnonzero(rows.kind == kind)
    idx = idx[np.lexsort((rows.index[idx], rows.score[idx], rows.layer[idx]))]  # by layer, then score, then index
    layers, first, sizes = np.unique(rows.layer[idx], return_index=True, return_counts=True)
    if (sizes < count).any():
        raise MopeError(f"cannot remove {count} {kind} units from {rows.tower} layer {layers[sizes.argmin()]}: "
                        f"it has {sizes.min()}")
    rank = np.arange(len(idx)) - np.repeat(first, sizes)
    return [rows.unit(i) for i in idx[rank < count]]


def _uniform_counts(rows: _Rows, keep: float, measure: str) -> dict[str, int]:
    """Heads and neuron groups removed per layer whose kept size is closest to `keep`, preferring equal fractions."""
    total, size = rows.total(measure), rows.measure(measure)
    n, unit = {}, {}
    for k in ("head", "neurons"):
        mask = rows.kind == k
        n[k] = int(np.unique(rows.layer[mask], return_counts=True)[1].min()) if mask.any() else 0
        unit[k] = float(size[mask].mean()) if mask.any() else 0.0
    layers = len(np.unique(rows.layer))
    h, g = np.meshgrid(np.arange(n["head"] + 1), np.arange(n["neurons"] + 1), indexing="ij")
    kept = 1 - layers * (h * unit["head"] + g * unit["neurons"]) / total
    balance = np.abs(h / max(n["head"], 1) - g / max(n["neurons"], 1)) if n["head"] and n["neurons"] else 0
    best = np.unravel_index(np.argmin(np.abs(kept - keep) + 0.1 * balance), kept.shape)
    return {"head": int(best[0]), "neurons": int(best[1])}


def _global(rows: _Rows, keep: float, budget: Budget) -> list[Unit]:
    """Lowest scores anywhere in the tower until the kept size reaches keep; a floor per layer and kind."""
    target = (1 - keep) * rows.total(budget.measure)
    size = rows.measure(budget.measure)
    idx = np.flatnonzero(rows.width_mask())
    idx = idx[np.lexsort((rows.index[idx], rows.kind[idx], rows.layer[idx], rows.score[idx]))]
    keys, counts = np.unique(np.stack([rows.layer[idx], rows.kind[idx] == "head"]), axis=1, return_counts=True)
    left = {(int(layer), bool(head)): int(c) for (layer, head), c in zip(keys.T, counts)}
    removed, amount = [], 0.0
    for i in idx:
        if amount + size[i] / 2 > target:
            break
        key = (int(rows.layer[i]), rows.kind[i] == "head")
        if left[key] <= budget.floor:
            continue
        left[key] -= 1
        removed.append(rows.unit(i))
        amount += size[i]
    return removed


def _depth(rows: _Rows, budget: Budget) -> list[Unit]:
    count = budget.per_tower("layers").get(rows.tower)
    if not count:
        return []
    idx = np.flatnonzero(rows.kind == "layer")
    if not len(idx):
        raise MopeError(f"the scores table has no layer rows for the {rows.tower} tower; score layers first")
    if count >= len(idx):
        raise MopeError(f"cannot remove {count} of the {len(idx)} {rows.tower} layers: at least one must stay")
    return [rows.unit(i) for i in idx[np.lexsort((rows.layer[idx], rows.score[idx]))][:count]]


def _tied(rows: _Rows, removed: list[Unit], global_width: bool) -> int:
    """How many removed units have the same value as a unit that competed with them and was kept: those
    a tie-break chose. Competitors: the same layer and kind (uniform), every head and neuron group of the
    tower (global), the tower's layers (depth)."""
    names = {u.name for u in removed}
    gone = np.array([rows.unit(i).name in names for i in range(len(rows.kind))], dtype=bool)
    groups = [rows.kind == "layer"]
    if global_width:
        groups.append(rows.width_mask())
    else:
        groups += [(rows.kind == k) & (rows.layer == layer) for k in ("head", "neurons") for layer in np.unique(rows.layer)]
    return sum(int(np.isin(rows.value[g & gone], rows.value[g & ~gone]).sum()) for g in groups)


def _sizes(rows: _Rows, removed: list[Unit]) -> dict[str, int]:
    """Params and FLOPs of the tower's transformer before and after removing `removed`."""
    dropped = {u.layer for u in removed if u.kind == "layer"}
    gone = {(u.kind, u.layer, u.index) for u in removed if u.kind != "layer" and u.layer not in dropped}
    width_gone = np.array([(k, int(layer), int(i)) in gone for k, layer, i in zip(rows.kind, rows.layer, rows.index)])
    layer_gone = (rows.kind == "layer") & np.isin(rows.layer, list(dropped))
    out = {}
    for measure in MEASURES:
        before, size = rows.total(measure), rows.measure(measure)
        after = before - size[width_gone].sum() - size[layer_gone].sum()
        out[f"{measure}_before"], out[f"{measure}_after"] = int(before), int(after)
    return out
