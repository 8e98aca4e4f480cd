"""Importance criteria: how much each unit matters, by one name each, all with one signature.

A criterion is a function `(clip, units, group_sizes, task, seed) -> one float per unit` (higher =
more important; plans remove the lowest first), registered under the column name it gets in a scores
table. MoPE itself (the ablation drop) is registered by `scoring`; magnitude, Taylor and random are
the baselines the paper compares it with, computed alongside it by `score()`.

A new criterion is one decorated function here (or in any module imported by `mope`):

    @register("my_criterion", label="My criterion")
    def my_criterion(clip, units, group_sizes, task=None, seed=0):
        return [...]

and the CLI (`--baselines`, `--by`), `score()`, `plan(by=...)`, studies and the app list it.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .clip import Clip
from .data.tasks import Task, image_batches
from .errors import MopeError
from .evaluation import contrastive_loss, ensemble, task_texts
from .units import Unit, unit_weights


class ImportanceFn(Protocol):
    def __call__(self, clip: Clip, units: Sequence[Unit], group_sizes: dict[str, int], task: Task | None = None,
                 seed: int = 0) -> list[float]: ...


@dataclass(frozen=True)
class Criterion:
    """A registered criterion: its column name, the name shown to people, the function, what it needs."""

    name: str
    label: str
    fn: ImportanceFn
    needs_task: bool = False
    baseline: bool = True  # computed beside MoPE by score(); False for MoPE itself
    summary: str = ""

    def __call__(self, clip: Clip, units: Sequence[Unit], group_sizes: dict[str, int], task: Task | None = None,
                 seed: int = 0) -> list[float]:
        if self.needs_task and task is None:
            raise MopeError(f"the {self.label} criterion needs a task (calibration data: its metric or loss)")
        return [float(v) for v in self.fn(clip, list(units), group_sizes, task=task, seed=seed)]


def _mope_needs_scoring(clip: Clip, units: Sequence[Unit], group_sizes: dict[str, int], task: Task | None = None,
                        seed: int = 0) -> list[float]:
    """Stands in until mope.scoring (which computes MoPE, a layer above) registers mope_importance."""
    raise MopeError("MoPE is computed by mope.scoring: import it (or call mope.score) first")


# MoPE is declared here, so listing the criteria needs nothing else; scoring registers its function on import
REGISTRY: dict[str, Criterion] = {"mope": Criterion("mope", "MoPE", _mope_needs_scoring, needs_task=True,
                                                    baseline=False)}


def register(name: str, label: str | None = None, needs_task: bool = False, baseline: bool = True
             ) -> Callable[[ImportanceFn], ImportanceFn]:
    """Decorator: register `fn` as the criterion `name` (its column in a scores table)."""
    def add(fn: ImportanceFn) -> ImportanceFn:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        REGISTRY[name] = Criterion(name, label or name, fn, needs_task, baseline, summary)
        return fn
    return add


def criterion(name: str) -> Criterion:
    if name not in REGISTRY:
        raise MopeError(f"unknown importance criterion '{name}'; use {', '.join(REGISTRY)}")
    return REGISTRY[name]


def names() -> tuple[str, ...]:
    """Every registered criterion (MoPE first): the columns a plan can rank by."""
    return tuple(sorted(REGISTRY, key=lambda n: (REGISTRY[n].baseline, n)))


def baselines(needs_task: bool | None = None) -> tuple[str, ...]:
    """The criteria score() computes beside MoPE; needs_task=False keeps those that need no data."""
    return tuple(n for n in sorted(REGISTRY) if REGISTRY[n].baseline
                 and (needs_task is None or REGISTRY[n].needs_task == needs_task))


def labels() -> dict[str, str]:
    """Column name → the name shown to people (MoPE, magnitude, Taylor …)."""
    return {n: REGISTRY[n].label for n in names()}


def check_baselines(requested: Sequence[str] | None) -> tuple[str, ...]:
    """`requested` checked against the registered baselines; None means all of them."""
    known = baselines()
    if requested is None:
        return known
    for b in requested:
        if b not in known:
            raise MopeError(f"unknown baseline '{b}'; use {', '.join(known)}")
    return tuple(requested)


# --- the baselines ---------------------------------------------------------------------------------------

@register("magnitude")
def magnitude(clip: Clip, units: Sequence[Unit], group_sizes: dict[str, int], task: Task | None = None,
              seed: int = 0) -> list[float]:
    """L2 norm of the weights the unit owns."""
    return [float(torch.sqrt(sum((p.detach()[i].float() ** 2).sum() for p, i in
                                 unit_weights(clip.model, u, group_sizes[u.tower])))) for u in units]


@register("random")
def random_draw(clip: Clip, units: Sequence[Unit], group_sizes: dict[str, int], task: Task | None = None,
                seed: int = 0) -> list[float]:
    """A uniform draw per unit, seeded by (seed, unit name): a shard draws what one process draws."""
    return [float(np.random.default_rng([seed, zlib.crc32(u.name.encode())]).random()) for u in units]


@register("taylor", label="Taylor", needs_task=True)
def taylor(clip: Clip, units: Sequence[Unit], group_sizes: dict[str, int], task: Task | None = None,
           seed: int = 0) -> list[float]:
    """|w · dL/dw| summed over the unit's weights, L the task's contrastive loss."""
    grads = _loss_gradients(clip, task)
    return [float(sum((p.detach()[i] * grads[p][i]).abs().sum() for p, i in
                      unit_weights(clip.model, u, group_sizes[u.tower]))) for u in units]


def _loss_gradients(clip: Clip, task: Task, batch_size: int = 64) -> dict:
    """Gradients of the task's contrastive loss (see evaluation.contrastive_loss) for every parameter, also of a
    frozen model (a distillation teacher): requires_grad is switched on for the pass and put back after."""
    frozen = [p for p in clip.model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        return _summed_gradients(clip, task, batch_size)
    finally:
        for p in frozen:
            p.requires_grad_(False)


def _summed_gradients(clip: Clip, task: Task, batch_size: int) -> dict:
    model = clip.model
    params = [p for p in model.parameters()]
    grads = {p: torch.zeros_like(p) for p in params}
    scale = model.logit_scale.exp().detach()
    tokens = clip.tokenizer(task_texts(task)).to(clip.device)
    batches = list(image_batches(task, clip.preprocess, batch_size if task.protocol == "zeroshot" else len(task)))
    start = 0
    for x in batches:
        with torch.enable_grad():
            text = model.encode_text(tokens, normalize=True)
            if task.protocol == "zeroshot":
                text = ensemble(text, len(task.classnames))
            image = model.encode_image(x.to(clip.device), normalize=True)
            if task.protocol == "zeroshot":
                labels = task.labels[start:start + len(x)].to(clip.device)
                loss = F.cross_entropy(scale * image @ text.T, labels, reduction="sum") / len(task)
            else:
                loss = contrastive_loss(task, image, text, scale)
            g = torch.autograd.grad(loss, params, allow_unused=True)
        for p, gi in zip(params, g):
            if gi is not None:
                grads[p] += gi
        start += len(x)
    return grads
