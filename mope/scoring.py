"""MoPE scoring: the drop in a zero-shot metric when one unit is removed, for every unit.

`MoPE(θ) = Z[f] − Z[f without θ]` (for a loss: the increase). The fast path computes the same
numbers as the naive one (a full re-evaluation per unit, kept as the reference) by
- embedding the other tower once (its output does not change when this tower loses a unit),
- caching the hidden state entering every layer, so ablating a unit of layer l re-runs only l..L,
- running several ablations of one layer as one batched forward pass (per-sample masks).
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import sqlite3
import time
from contextlib import contextmanager, nullcontext
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from . import importance
from .ablation import MaskedBlock, ablated, starting_at
from .anytime import (
    budgeted_first,
    check_schedule,
    first_round_size,
    ladder,
    next_levels,
    standard_error,
)
from .cache import cache_get, cache_set, key_of, model_fingerprint, open_cache
from .clip import Clip
from .data.tasks import Task
from .errors import MopeError
from .evaluation import (
    check_metric,
    default_metric,
    ensemble,
    higher_is_better,
    image_embeddings,
    metric_value,
    retrieval_contributions,
    task_text_embeddings,
    task_texts,
    zeroshot_contributions,
    zeroshot_stats,
    zeroshot_value,
)
from .first_order import loss_increases
from .progress import TimeLeft
from .ranking import rank_units
from .rules import arguments, name_list
from .short_text import short_length, shortened
from .units import (
    KINDS,
    TOWERS,
    Unit,
    check_group_size,
    enumerate_units,
    tokens_of,
    tower_blocks,
    unit_flops,
    unit_params,
)

TOKEN_BUDGET = 2**17  # tokens per batched ablation pass on a GPU; bounds memory, not results
CPU_PASS_GIB = 1.5  # a CPU's default cap on one ablation pass (GiB): ViT-B-16 scoring then peaks near 3 GiB
ACTIVATIONS = 8  # residual-width tensors alive at once in a block pass (x, ln, q, k, v, attention, out, y)
MIN_ROWS = 16  # CPU matmuls over fewer rows round differently (MKL small-M kernels): chunks are padded to this
FIRST_ROUND_MIN = MIN_ROWS  # anytime's first round: images per unit, at least (fewer cost as much: padding)

Progress = Callable[[int, int, float | None, list[dict]], None]


class Cancelled(MopeError):
    """Raised when should_stop() says so; `rows` holds the units scored so far (anytime: the last table) and, when
    mope.score raised it, `table` those rows as a table with the scores' attrs (group sizes: a plan can be made)."""

    def __init__(self, rows: list[dict], message: str | None = None):
        super().__init__(message or f"cancelled after {len(rows)} units")
        self.rows = rows
        self.table: pd.DataFrame | None = None


def score(clip: Clip, task: Task, towers: Sequence[str] = TOWERS, units: Sequence[str] = KINDS,
          metric: str | None = None, impl: str = "fast", group_size: int | None = None,
          baselines: Sequence[str] | None = None, seed: int = 0, precision: str = "fp32", cache: bool = True,
          progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
          shard: tuple[int, int] | None = None, batch_tokens: int | None = None,
          chunk: int | None = None, max_memory: float | None = None, schedule: str = "exact",
          first_round: int | None = None, first_table_seconds: float | None = None,
          only: Sequence[str] | None = None, classifier: torch.Tensor | None = None,
          on_table: Callable[[pd.DataFrame], None] | None = None) -> pd.DataFrame:
    """One row per unit: tower, kind, layer, index, unit, mope, base, ablated, params, flops, baselines,
    images_used, se (standard error of mope over images; 0 on the whole set), mope_loss and rank.

    shard=(rank, world) scores units[rank::world] only (for torchrun); rows keep the global order.
    batch_tokens bounds the tokens of one batched ablation pass, chunk the images (or texts) held at once;
    max_memory (GiB) sets batch_tokens from a memory cap (see memory_tokens); by default see pass_tokens.
    None of them changes a result.
    schedule="anytime" scores every unit on first_round images, then refines in rounds (see mope.anytime):
    progress gets the whole table after each round, the table's attrs["anytime"] says where it stands.
    first_table_seconds (anytime, no first_round): round 1 gets as many images per unit as fit that time here.
    on_table (anytime): called after each round with the whole table so far, attrs included (a plan can be made
    from it and says it was ranked on estimates): e.g. to save each round's table.
    only: the names of the units to score (the others are left out of the table), e.g. iterative pruning's pool.
    classifier: a zero-shot task's class embeddings when the caller already has them from a FastScorer of this model
    and these classes with the same precision (FastScorer.classifier; not in the cache key: they must be exactly
    those); the fast path then skips the text tower's pass. Iterative pruning passes them from its image choice.
    """
    started = time.perf_counter()  # first_table_seconds counts from here
    towers, units = _names(towers, units)
    arguments("mope.score", batch_tokens=batch_tokens, chunk=chunk, max_memory=max_memory, first_round=first_round,
              first_table_seconds=first_table_seconds)
    metric, group_sizes, fingerprint, model_fp, key = _settle(clip, task, towers, units, metric, impl, group_size,
                                                               baselines, seed, precision, shard)
    batch_tokens = pass_tokens(clip, towers, batch_tokens, max_memory)
    _check_schedule(schedule, impl, shard)
    all_units = enumerate_units(clip.model, towers, units, group_sizes)
    todo = all_units if shard is None else all_units[shard[0]::shard[1]]
    if only is not None:  # a table of these units only: its own fingerprint, so per_image() finds its results
        names = set(only)
        todo, fingerprint = [u for u in todo if u.name in names], key_of(table=fingerprint, only=sorted(names))
        key = f"{fingerprint}/{shard}"
    extras = functools.partial(unit_rows, clip, task, todo, group_sizes, baselines, seed)
    frame = functools.partial(_frame, fingerprint=fingerprint, model_fp=model_fp, metric=metric, group_sizes=group_sizes)
    hit = _cached_rows(key) if cache else None
    if hit is not None:
        return frame(hit, anytime={"done": True, "images": len(task)}) if schedule == "anytime" else frame(hit)
    if impl == "naive":
        scorer = NaiveScorer(clip, task, metric, group_sizes, precision)
    else:
        scorer = FastScorer(clip, task, metric, group_sizes, precision, batch_tokens, chunk, classifier)
    try:
        if schedule == "anytime":
            deadline = None if first_table_seconds is None else started + first_table_seconds
            rounds = None if on_table is None else lambda rows: on_table(frame(rows, anytime={
                "done": False, "images": len(task), "round": max(r["round"] for r in rows)}))
            rows = _Anytime(scorer, todo, key if cache else None, first_round, deadline).run(extras, progress,
                                                                                            should_stop, rounds)
            info = {"anytime": {"done": True, "images": len(task), "round": max((r["round"] for r in rows), default=0)}}
        else:
            rows, info = _exact_rows(_sweep(scorer, todo, key if cache else None, progress, should_stop), task,
                                     extras()), {}
    except Cancelled as stop:
        stop.table = frame(stop.rows)  # what a plan needs from the rows so far: the group sizes
        raise
    per_image_rows = (scorer.per_image, scorer.per_image_loss) if impl == "fast" else None
    if cache:
        _store(key, [{k: v for k, v in r.items() if k != "round"} for r in rows], per_image_rows)
        _forget_sweep(key)
    return frame(rows, **info)


def _sweep(scorer: "_Scorer", units: list[Unit], key: str | None, progress: Progress | None,
           should_stop) -> list[dict]:
    """scorer.run, kept in the cache a layer (fast) or a unit (naive) at a time under `key` (None: not kept): a
    stopped or killed sweep continues after its last finished group, and a group's numbers do not depend on the
    groups run before it, so the table is the one an unbroken sweep gives, bit for bit."""
    done = _restored_sweep(scorer, key) if key else []
    finished = {r["unit"] for r in done}
    parts = itertools.count(cache_get("scores", f"{key}/sweep") or 0) if key else None

    def keep(rows: list[dict]) -> None:
        part = next(parts)
        cache_set("scores", {f"{key}/sweep/{part}": {
            "rows": rows, "per_image": {r["unit"]: _bytes(scorer.per_image.get(r["unit"])) for r in rows},
            "per_image_loss": {r["unit"]: _bytes(scorer.per_image_loss.get(r["unit"])) for r in rows}},
            f"{key}/sweep": part + 1})  # the parts written so far

    return scorer.run([u for u in units if u.name not in finished], progress, should_stop, done,
                      keep if key else None)


def _restored_sweep(scorer: "_Scorer", key: str) -> list[dict]:
    """The rows (and per-image results) of the groups a broken sweep under `key` finished."""
    rows: list[dict] = []
    for part in range(cache_get("scores", f"{key}/sweep") or 0):
        record = cache_get("scores", f"{key}/sweep/{part}")
        if record is None:  # the cache lost a part: the groups after it run again
            break
        rows += record["rows"]
        for field, into in (("per_image", scorer.per_image), ("per_image_loss", scorer.per_image_loss)):
            into.update({name: torch.from_numpy(np.frombuffer(b, dtype=np.float32).copy())
                         for name, b in record[field].items() if b is not None})
    return rows


def _bytes(values: torch.Tensor | None) -> bytes | None:
    return None if values is None else values.float().numpy().tobytes()


def _forget_sweep(key: str) -> None:
    """Drop a finished sweep's groups: the table and its per-image results are cached whole."""
    parts = cache_get("scores", f"{key}/sweep")
    if parts is None:
        return
    try:
        with open_cache("scores") as store:
            for part in range(parts):
                store.delete(f"{key}/sweep/{part}")
            store.delete(f"{key}/sweep")
    except (sqlite3.Error, OSError):
        pass  # left behind, harmless: a finished table is found first


def _exact_rows(rows: list[dict], task: Task, extras: list[dict]) -> list[dict]:
    texts = len(task_texts(task))
    for row, extra in zip(rows, extras):
        row.update(extra, images_used=len(task), texts_used=texts, se=0.0, estimate=False)
    return rows


def _store(key: str, rows: list[dict], per_image_rows: tuple[dict, dict] | None) -> None:
    per_image = {} if per_image_rows is None else {f"{key}/per_image": _per_image_record(*per_image_rows, rows)}
    cache_set("scores", {key: rows, **per_image})


def _check_schedule(schedule: str, impl: str, shard) -> None:
    check_schedule(schedule)
    if schedule == "anytime" and (impl != "fast" or shard is not None):
        raise MopeError("anytime scoring runs the fast path in one process: use impl='fast' and no shard / torchrun")


class _Samples:
    """What a unit's level means in one tower: images in FastScorer.image_order (those nearest the decision first
    for a hit metric, else the highest unablated loss first: where removing a unit flips or moves an outcome), or,
    for the zero-shot text tower, prompt templates (the first `level` of every class)."""

    def __init__(self, scorer: "FastScorer", tower: str):
        task = self.task = scorer.task
        self.tower, self.templates = tower, tower == "text" and task.protocol == "zeroshot"
        self.total = len(task.templates) if self.templates else len(task)
        self.ladder: list[int] = []  # the levels a unit climbs (climb sets them)
        self.hardness = None if self.templates else scorer.image_losses(tower)
        self.order = None if self.templates else scorer.image_order(tower, self.hardness)

    def first_level(self, images: int) -> int:
        """The level of a first round on `images` images per unit (zero-shot text: as large a share of the templates)."""
        return max(1, round(images * self.total / len(self.task))) if self.templates else images

    def climb(self, first: int) -> None:
        """The ladder from a first round of `first` images per unit."""
        self.ladder = (ladder(self.first_level(first), self.total) if self.templates
                       else ladder(first, self.total, least=MIN_ROWS))  # fewer new images cost as much (padding)

    def images(self, level: int) -> torch.Tensor:
        """Task positions of the images run at `level` (every image: the zero-shot text tower's classifier)."""
        return torch.arange(len(self.task)) if self.templates else self.order[:level].sort().values

    def texts(self, level: int) -> torch.Tensor:
        """Positions (task_texts order) of the prompts / captions run at `level` (vision: every one, unablated)."""
        task = self.task
        if self.templates:
            return (torch.arange(len(task.classnames))[:, None] * self.total + torch.arange(level)[None]).flatten()
        if self.tower == "vision":
            return torch.arange(len(task_texts(task)))
        return torch.isin(task.text_to_image, self.images(level)).nonzero().flatten()

    def run(self, level: int) -> torch.Tensor:
        """The tower's inputs run at `level`."""
        return self.texts(level) if self.tower == "text" else self.images(level)

    def new(self, old: int, new: int) -> torch.Tensor:
        """The tower's inputs a unit runs to go from level `old` to `new` (none it ran before)."""
        have, want = self.run(old), self.run(new)
        return want[~torch.isin(want, have)]

    def spread(self, per_image: torch.Tensor, level: int) -> float:
        """Standard error of a mope that counts the images not run yet as unchanged, modelling their MoPE's spread
        as proportional to their unablated loss (the images run show how much per unit of loss)."""
        seen = torch.zeros(len(self.task), dtype=torch.bool)
        seen[self.images(level)] = True
        loss = self.hardness.double()
        if seen.all():
            return 0.0
        if loss[seen].sum() <= 0:
            return math.inf
        per_loss = (per_image.double()[seen] ** 2).sum() / loss[seen].sum()
        return float((per_loss * loss[~seen].sum()).sqrt() / len(self.task))


class _Anytime:
    """The rounds of anytime scoring (which units go how far: mope.anytime.next_levels). A unit's ablation
    runs once on each of its inputs: a round adds new inputs only, their per-sample outputs (what
    FastScorer.collect keeps) accumulate, estimates come from those so far, and a unit with every input is
    finished by the exact sweep's own code on the same numbers, so the final table equals it bit for bit.
    Every unit's work is cached after each round and at a stop: a restart continues from it.

    From round 2 on, a zero-shot vision unit's estimate counts the images it has not run yet at their first-order
    loss increase (mope.first_order, one backward pass after round 1) instead of unchanged: the loss (the acc1
    tie-break) then misses only the first-order estimate's error on them (row field first_order: True).

    With a deadline for the first table (a time.perf_counter() time), round 1's images per unit are what fits
    before it at the measured speed of a block here; when that is fewer than MIN_ROWS, round 1 is a first look run
    without padding (estimates only: its outputs are not kept, the units run those images again, padded, in round 2),
    the text tower on its inputs' real length (mope.short_text: several times cheaper, estimates only)."""

    def __init__(self, scorer: "FastScorer", units: list[Unit], key: str | None, first_round: int | None,
                 deadline: float | None = None):
        self.scorer, self.task, self.units, self.key = scorer, scorer.task, units, key
        self.first = first_round_size(len(self.task), first_round, FIRST_ROUND_MIN)
        self.deadline = None if first_round is not None else deadline  # an explicit first round wins
        self.look, self.speed = 0, {}  # images per unit of the unpadded first look (0: none); seconds per block-input
        self.looks: dict[str, tuple[int, torch.Tensor, dict]] = {}  # unit → (level, outputs, baseline) of its first look
        self.short: dict[str, int] = {}  # tower → the tokens its first look runs (the text tower's real length)
        self.samples: dict[str, _Samples] = {}  # per tower, made in run() (they need its unablated pass)
        self.round, self.levels = 0, {u.name: 0 for u in units}
        self.outputs: dict[str, torch.Tensor] = {}  # unit → per-sample outputs of every input (zero: not run yet)
        self.rows: dict[str, dict] = {}
        self.extra: dict[str, dict] = {}  # params, flops, baselines per unit (a resumed run's rows have them)
        self.per_image = scorer.per_image  # finished units: their per-image MoPE
        self.fill: dict[str, torch.Tensor] | None = None  # unit → first-order loss increase per image (None: not yet)

    def run(self, extras, progress: Progress | None, should_stop,
            on_table: Callable[[list[dict]], None] | None = None) -> list[dict]:
        self.scorer.should_stop = should_stop
        with torch.inference_mode():
            self.samples = {t: _Samples(self.scorer, t) for t in dict.fromkeys(u.tower for u in self.units)}
        if not self.restore():
            self.extra = {u.name: extra for u, extra in zip(self.units, extras())}
            if self.deadline is not None:
                with torch.inference_mode():  # it may run a tower's unablated pass
                    self.fit_first(self.deadline - time.perf_counter())
        for samples in self.samples.values():
            samples.climb(self.first)
        while True:
            table = self.table()
            look = self.look > 0 and self.round == 0
            targets = None if look else self.targets(table)
            if not look and (targets == table["level"].to_numpy()).all():
                return [self.rows[u.name] for u in self.units]
            self.round += 1
            if self.round > 1 and self.fill is None:  # round 2 starts with the first-order pass, estimates redone
                with self.saved_on_stop():
                    self.fill_in()
                targets = self.targets(self.table())
            with self.saved_on_stop(), torch.inference_mode(), self.scorer.autocast():
                if look:
                    self.first_look(progress)
                else:
                    self.advance(dict(zip((u.name for u in self.units), targets)), progress)
            self.save()
            rows = [self.rows[u.name] for u in self.units]
            if progress:
                progress(*self.done(), None, rows)
            if on_table:
                on_table(rows)

    def targets(self, table: pd.DataFrame) -> np.ndarray:
        return next_levels(table, {t: s.ladder for t, s in self.samples.items()})

    @contextmanager
    def saved_on_stop(self):
        try:
            yield
        except _Stopped:
            self.save()
            raise self.stopped() from None

    def fill_in(self) -> None:
        """The first-order loss increase of every unfinished zero-shot vision unit on every image (one backward pass,
        in chunks whose activations over all blocks hold about what one batched ablation pass holds), with their
        estimates redone with it; none ({}) for other towers, retrieval, or a metric list without the loss. A stop
        during the pass leaves self.fill None, so a restart runs it again."""
        scorer = self.scorer
        units = [u for u in self.units if u.tower == "vision" and self.levels[u.name] < self.samples["vision"].total]
        if not units or scorer.task.protocol != "zeroshot" or "loss" not in scorer.metrics:
            self.fill = {}
            return
        state = scorer.tower_state("vision")
        inputs, classifier = state["inputs"], state["other"].clone()  # clones: inference-mode tensors can't be saved

        def chunk(span: tuple[int, int]) -> tuple[int, Callable[[], torch.Tensor]]:
            batch, labels = inputs.batch(*span).clone(), inputs.labels(*span)[:span[1] - span[0]]
            return len(batch), lambda: zeroshot_stats("loss", scorer.encode("vision", batch)[:len(labels)], classifier,
                                                      labels, scorer.scale)

        model = scorer.clip.model  # a backward pass keeps every block's activations: a pass's tokens over all blocks
        rows = max(1, scorer.batch_tokens // (len(tower_blocks(model, "vision")) * tokens_of(model, "vision")))
        spans = [(i, min(i + rows, stop)) for start, stop in inputs.spans for i in range(start, stop, rows)]
        with scorer.autocast():
            found = loss_increases(model, "vision", units, scorer.group_sizes.get("vision", 1), map(chunk, spans),
                                   scorer.check_stop)
        by_task = torch.zeros_like(found)
        by_task[:, inputs.index] = found
        self.fill = {u.name: by_task[i] for i, u in enumerate(units)}
        with torch.inference_mode():
            for u in (u for u in units if u.name in self.outputs or u.name in self.looks):  # what a row comes from
                self.rows[u.name] = self.row(u)

    def fit_first(self, seconds: float) -> None:
        """Round 1's images per unit: the most (up to the default) that fit `seconds` at a block's measured speed
        here (every unit re-runs its layer and those after it on each input); fewer than MIN_ROWS: a first look, sized
        again with the text tower's inputs as cheap as their real length makes them (see look_inputs)."""
        self.speed = {t: block_seconds(self.scorer.clip, t) for t in self.samples}
        images = budgeted_first(seconds, functools.partial(self.first_seconds, self.units), self.first)
        if images >= MIN_ROWS:
            self.first = images
            return
        model = self.scorer.clip.model
        for tower in self.samples:  # a first look: the text tower on its real length, each input that much cheaper
            length = None if tower == "vision" else short_length(model, self.scorer.tower_state(tower)["inputs"].tokens)
            if length:
                self.short[tower] = length
                self.speed[tower] *= length / tokens_of(model, tower)
        self.look = budgeted_first(seconds, functools.partial(self.first_seconds, self.units), min(self.first, MIN_ROWS - 1))

    def first_seconds(self, units: list[Unit], images: int) -> float:
        """Seconds `units` take to run a first round of `images` images each at the measured speed of a block."""
        model = self.scorer.clip.model
        return sum((len(tower_blocks(model, u.tower)) - u.layer) * self.speed[u.tower]
                   * len(self.samples[u.tower].run(self.samples[u.tower].first_level(images))) for u in units)

    def first_look(self, progress: Progress | None) -> None:
        """Round 1 as an unpadded first look (estimates only), one tower and layer at a time; before each layer, the
        images per unit (at most `look`) are fitted again to the time left at the speed seen so far (a busy machine's
        speed changes)."""
        layers = itertools.groupby(sorted(self.units, key=lambda u: (u.tower, u.layer)), key=lambda u: (u.tower, u.layer))
        groups = [list(g) for _, g in layers]
        start, planned, inputs = time.perf_counter(), 0.0, None
        for i, group in enumerate(groups):
            slower = max((time.perf_counter() - start) / planned, 1e-9) if planned else 1.0
            rest = [u for g in groups[i:] for u in g]
            images = budgeted_first((self.deadline - time.perf_counter()) / slower,
                                    functools.partial(self.first_seconds, rest), self.look)
            planned += self.first_seconds(group, images)
            samples = self.samples[group[0].tower]
            level = samples.first_level(images)
            if inputs is None or inputs.tower != samples.tower or len(inputs.index) != len(samples.run(level)):
                inputs, baseline = self.look_inputs(samples.tower, samples.run(level))
            self.scorer.check_stop()
            with self.shortened(samples.tower):
                outputs_of = self.scorer.sample_outputs(group, inputs)
            for unit, out in outputs_of.items():
                outputs = out.new_zeros(len(baseline["own"]), *out.shape[1:])
                outputs[inputs.index] = out
                self.looks[unit.name] = (level, outputs, baseline)
                self.rows[unit.name] = self.row(unit)
            if progress:
                progress(*self.done(), None, [self.rows[u.name] for u in self.units if u.name in self.rows])

    def look_inputs(self, tower: str, index: torch.Tensor) -> tuple["TowerInputs", dict]:
        """The first look's inputs at `index`, unpadded (and shortened, see self.short), and the unablated outcome its
        estimates compare with: the tower's own, with the inputs run here as run here (own, base, contributions)."""
        state, scorer = self.scorer.tower_state(tower), self.scorer
        inputs = state["inputs"].subset(index, 1, self.short.get(tower))
        if tower not in self.short:
            return inputs, state
        own = state["own"].clone()
        with self.shortened(tower):
            for span in inputs.spans:
                emb = scorer.encode(tower, inputs.batch(*span))
                own[inputs.index[span[0]:span[1]]] = scorer.collect(tower, state, inputs, emb, span)
        base, shares = scorer.finish(tower, state, [own])
        return inputs, {"own": own, "base": base, "contributions": shares[scorer.metric]}

    def shortened(self, tower: str):
        return shortened(self.scorer.clip.model, self.short[tower]) if tower in self.short else nullcontext()

    def advance(self, targets: dict[str, int], progress: Progress | None) -> None:
        """One round: every unit to its target level, the units of one tower, step and layer at a time."""
        def step(u: Unit) -> tuple:
            return u.tower, self.levels[u.name], targets[u.name], u.layer

        moving = sorted((u for u in self.units if targets[u.name] > self.levels[u.name]), key=step)  # a step's inputs once
        steps = itertools.groupby(moving, key=step)
        current: tuple = (None, None)  # one step's inputs at a time (with their hidden states, when one chunk)
        for (tower, old, new, _), group in steps:
            if current[0] != (tower, old, new):
                index = self.samples[tower].new(old, new)
                current = ((tower, old, new), self.scorer.tower_state(tower)["inputs"].subset(index))
            self.scorer.check_stop()
            inputs = current[1]
            for unit, out in self.scorer.sample_outputs(list(group), inputs).items():
                if unit.name not in self.outputs:
                    self.outputs[unit.name] = out.new_zeros(len(self.scorer.tower_state(tower)["own"]), *out.shape[1:])
                self.outputs[unit.name][inputs.index] = out
                self.levels[unit.name] = new
                self.looks.pop(unit.name, None)
                self.rows[unit.name] = self.row(unit)
            if progress and self.round == 1:
                progress(*self.done(), None, [self.rows[u.name] for u in self.units if u.name in self.rows])

    def row(self, unit: Unit) -> dict:
        """The unit's row from its outputs so far: the exact sweep's (every input) or an estimate."""
        samples, state = self.samples[unit.tower], self.scorer.tower_state(unit.tower)
        level, outputs, baseline = self.looks.get(unit.name, (self.levels[unit.name], self.outputs.get(unit.name), state))
        if level == samples.total:
            row = self.scorer.unit_row(unit, state, [outputs])
            used, se = (len(self.task), len(task_texts(self.task))), 0.0
        else:
            row, se = self.estimate(unit, level, outputs, baseline)
            used = (len(samples.images(level)), len(samples.texts(level)))
        return {**row, **self.extra.get(unit.name, {}), "images_used": used[0], "texts_used": used[1], "se": se,
                "estimate": level < samples.total, "round": self.round,
                "first_order": level < samples.total and unit.name in (self.fill or {})}

    def estimate(self, unit: Unit, level: int, outputs: torch.Tensor, baseline: dict) -> tuple[dict, float]:
        """The unit's row from the inputs it ran, and its standard error, against `baseline` (the tower's unablated
        own, base and contributions). Images: the whole set's metric with the outcomes of the images not run yet
        counted as unchanged, but for their loss once the first-order pass has run (see fill_in); the
        zero-shot text tower: the classifier from the templates run (standard error over
        templates)."""
        samples, scorer = self.samples[unit.tower], self.scorer
        state = scorer.tower_state(unit.tower)
        if samples.templates:
            per_template = [self.on_templates(unit, state, baseline, outputs, [j])["mope"] for j in range(level)]
            return (self.on_templates(unit, state, baseline, outputs, range(level)),
                    standard_error(np.array(per_template), samples.total))
        mixed, run = baseline["own"].clone(), samples.run(level)
        mixed[run] = outputs[run]
        if unit.name in (self.fill or {}):  # the images not run: their loss at its first-order increase
            rest = torch.ones(len(mixed), dtype=torch.bool)
            rest[run] = False
            mixed[rest, scorer.metrics.index("loss")] += self.fill[unit.name][rest]
        values, shares = scorer.finish(unit.tower, state, [mixed])
        per_image = scorer.sign * (baseline["contributions"] - shares[scorer.metric])
        return scorer.row(unit, baseline["base"], values), samples.spread(per_image, level)

    def on_templates(self, unit: Unit, state: dict, baseline: dict, outputs: torch.Tensor, templates) -> dict:
        """The zero-shot text tower's row with the classifier averaged over these templates, with and without the unit."""
        task, scorer = self.task, self.scorer
        prompts = (torch.arange(len(task.classnames))[:, None] * len(task.templates) + torch.tensor(list(templates))[None])
        values = []
        for own in (baseline["own"], outputs):
            classifier = ensemble(own[prompts.flatten()], len(task.classnames))
            stats = torch.stack([zeroshot_stats(m, state["other"], classifier, task.labels, scorer.scale)
                                 for m in scorer.metrics], 1)
            values.append({m: zeroshot_value(m, stats[:, i].contiguous(), task.labels)
                           for i, m in enumerate(scorer.metrics)})
        return scorer.row(unit, *values)

    def table(self) -> pd.DataFrame:
        """What next_levels decides from: every unit's tower, kind, layer, level, params and (once scored) scores."""
        cols = ("mope", "mope_loss", "se", "params")
        return pd.DataFrame([{"tower": u.tower, "kind": u.kind, "layer": u.layer, "level": self.levels[u.name],
                              "top": self.samples[u.tower].total, "params": self.extra[u.name].get("params", 1),
                              **{c: self.rows.get(u.name, {}).get(c, np.nan) for c in cols[:3]}}
                             for u in self.units])

    def done(self) -> tuple[int, int]:
        """(work done, all the work) in unit-images: each unit's share of its inputs run, × images."""
        n = len(self.task)
        share = sum(self.looks.get(u.name, (self.levels[u.name],))[0] / self.samples[u.tower].total for u in self.units)
        return round(share * n), len(self.units) * n

    def stopped(self) -> Cancelled:
        rows = [self.rows[u.name] for u in self.units if u.name in self.rows]
        kept = "kept and cached; a restart continues from it" if self.key else "kept in this error's rows"
        return Cancelled(rows, f"stopped in round {self.round} of anytime scoring: {len(rows)} of {len(self.units)} "
                               f"units scored so far; their work is {kept}")

    def save(self) -> None:
        if not self.key:
            return
        def stored(tensors: dict[str, torch.Tensor]) -> dict:
            return {k: (list(v.shape), v.float().numpy().tobytes()) for k, v in tensors.items()}

        state = {"round": self.round, "first": self.first, "levels": self.levels, "rows": self.rows, "extra": self.extra,
                 "outputs": stored(self.outputs), "fill": None if self.fill is None else stored(self.fill)}
        cache_set("scores", {f"{self.key}/anytime": state})

    def restore(self) -> bool:
        """Continue from a cached run of the same scoring (True when there was one)."""
        if not self.key:
            return False
        state = cache_get("scores", f"{self.key}/anytime")
        if state is None or "levels" not in state:  # none, or the table of an earlier version (it re-scored rounds)
            return False
        self.round, self.levels, self.rows, self.extra = state["round"], state["levels"], state["rows"], state["extra"]
        self.first = state.get("first", self.first)

        def loaded(stored: dict) -> dict[str, torch.Tensor]:
            return {k: torch.from_numpy(np.frombuffer(b, dtype=np.float32).copy()).view(*shape)
                    for k, (shape, b) in stored.items()}

        self.outputs = loaded(state["outputs"])
        self.fill = None if state.get("fill") is None else loaded(state["fill"])
        return True


def per_image(scores: pd.DataFrame, column: str = "mope") -> pd.DataFrame | None:
    """The per-image results behind a cached (fast) scores table: one row per unit, one column per calibration
    image (task order); a row's mean is its `column`, mope or mope_loss (the tie-break's loss increase), for every
    zero-shot metric and for retrieval, to float rounding. None when the cache does not hold them (impl='naive',
    or cache=False with no cached run of the same fingerprint — the same model, task and settings, hence the same
    numbers — or another machine's table, or mope_loss from a version that did not keep it)."""
    record = cache_get("scores", f"{scores.attrs.get('fingerprint')}/None/per_image")
    field = {"mope": "matrix", "mope_loss": "loss_matrix"}[column]
    if record is None or field not in record:
        return None
    matrix = np.frombuffer(record[field], dtype=np.float32).reshape(len(record["units"]), -1)
    return pd.DataFrame(matrix, index=pd.Index(record["units"], name="unit"))


def _per_image_record(per_image_rows: dict[str, torch.Tensor], loss_rows: dict[str, torch.Tensor],
                      rows: list[dict]) -> dict:
    names = [r["unit"] for r in rows]
    out = {"units": names}
    for field, values in (("matrix", per_image_rows), ("loss_matrix", loss_rows)):
        if all(n in values for n in names):  # no loss_matrix when the metric is the loss (mope is mope_loss)
            matrix = torch.stack([values[n].float() for n in names]) if names else torch.zeros(0, 0)
            out[field] = matrix.numpy().tobytes()
    return out


def pass_tokens(clip: Clip, towers: Sequence[str] = TOWERS, batch_tokens: int | None = None,
                max_memory: float | None = None) -> int:
    """The tokens per batched ablation pass: what max_memory (GiB) allows, else batch_tokens, else the default:
    TOKEN_BUDGET on a GPU; on a CPU no more than CPU_PASS_GIB allows (ViT-B-16's default pass would hold 6.4 GB,
    the demo model's is unchanged). The tower with the widest blocks decides."""
    if max_memory is not None:
        return min(memory_tokens(clip.model, t, max_memory) for t in towers)
    if batch_tokens is not None:
        return batch_tokens
    if clip.device.type != "cpu":
        return TOKEN_BUDGET
    return min(TOKEN_BUDGET, *(memory_tokens(clip.model, t, CPU_PASS_GIB) for t in towers))


def memory_tokens(model: torch.nn.Module, tower: str, max_memory: float) -> int:
    """Tokens per ablation pass that fit max_memory GiB (see pass_bytes_per_token)."""
    return max(tokens_of(model, tower), int(max_memory * 2**30 // pass_bytes_per_token(model, tower)))


def pass_bytes_per_token(model: torch.nn.Module, tower: str) -> int:
    """Bytes one token holds in a batched ablation pass: about width × ACTIVATIONS + 2 × ffn float32s (the first
    term of the README's memory formula)."""
    block = tower_blocks(model, tower)[0]
    return 4 * (ACTIVATIONS * block.attn.embed_dim + 2 * block.mlp.c_fc.out_features)


def cached_scores(clip: Clip, task: Task, towers: Sequence[str] = TOWERS, units: Sequence[str] = KINDS,
                  metric: str | None = None, impl: str = "fast", group_size: int | None = None,
                  baselines: Sequence[str] | None = None, seed: int = 0, precision: str = "fp32") -> pd.DataFrame | None:
    """What score() with these arguments would return from the cache, or None when it would compute."""
    towers, units = _names(towers, units)
    metric, group_sizes, fingerprint, model_fp, key = _settle(clip, task, towers, units, metric, impl, group_size,
                                                               baselines, seed, precision, None)
    hit = _cached_rows(key)
    return None if hit is None else _frame(hit, fingerprint, model_fp, metric, group_sizes)


def _settle(clip, task, towers, units, metric, impl, group_size, baselines, seed, precision, shard):
    """Checked settings and their keys: (metric, group sizes, scores fingerprint, model fingerprint, cache key)."""
    arguments("mope.score", seed=seed)
    metric = metric or default_metric(task)
    group_sizes = _validate(clip, task, towers, units, metric, impl, baselines, precision, group_size)
    settings = dict(towers=list(towers), units=list(units), metric=metric, impl=impl, group_sizes=group_sizes,
                    baselines=list(importance.check_baselines(baselines)), seed=seed, precision=precision)
    model_fp = model_fingerprint(clip.model)
    fingerprint = key_of(model=model_fp, task=task.fingerprint(), **settings)
    return metric, group_sizes, fingerprint, model_fp, f"{fingerprint}/{shard}"


def _names(towers, units) -> tuple[list[str], list[str]]:
    """towers and unit kinds as non-empty lists of known names (a list, or comma-separated text)."""
    return (name_list(towers, TOWERS, "mope.score: towers"),
            name_list(units, KINDS, "mope.score: units", {"heads": "head", "layers": "layer"}))


def _cached_rows(key: str) -> list[dict] | None:
    return cache_get("scores", key)


def _frame(rows: list[dict], fingerprint: str, model_fp: str, metric: str, group_sizes: dict, **info) -> pd.DataFrame:
    """The table with its rank; attrs carry the fingerprints of the scores and the model, the metric, the group
    sizes (and, for anytime scoring, where it stands: info)."""
    df = pd.DataFrame(rows)
    if len(df):
        df["rank"] = rank_units(df)
    df.attrs.update(fingerprint=fingerprint, model=model_fp, metric=metric, group_sizes=group_sizes, **info)
    return df


def _validate(clip, task, towers, units, metric, impl, baselines, precision, group_size) -> dict[str, int]:
    """Every check that can fail, before any work starts."""
    if len(task) == 0:
        raise MopeError(f"task {task.name} has no images")
    for t in towers:
        if t not in TOWERS:
            raise MopeError(f"unknown tower '{t}'; use vision and/or text")
    for k in units:
        if k not in KINDS:
            raise MopeError(f"unknown unit kind '{k}'; use head, neurons and/or layer")
    if impl not in ("fast", "naive"):
        raise MopeError(f"unknown impl '{impl}'; use fast or naive")
    importance.check_baselines(baselines)
    if precision not in ("fp32", "bf16", "fp16"):
        raise MopeError(f"unknown precision '{precision}'; use fp32, bf16 or fp16")
    if precision != "fp32" and clip.device.type != "cuda":
        raise MopeError(f"{precision} autocast is for GPUs; on {clip.device.type} use fp32")
    check_metric(task, metric)
    return check_group_size(clip.model, towers, group_size)


class _Scorer:
    """Shared state: the metric, the base value, the mixed-precision context."""

    def __init__(self, clip: Clip, task: Task, metric: str, group_sizes: dict[str, int], precision: str):
        self.clip, self.task, self.metric, self.group_sizes = clip, task, metric, group_sizes
        self.sign = 1.0 if higher_is_better(metric) else -1.0
        self.scale = clip.model.logit_scale.exp().item()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.autocast = (lambda: torch.autocast("cuda", dtype=dtype)) if dtype else nullcontext
        self.per_image: dict[str, torch.Tensor] = {}  # unit name → per-image MoPE (mean over images ≈ mope; fast only)
        self.per_image_loss: dict[str, torch.Tensor] = {}  # … and per-image loss increase (mean ≈ mope_loss)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The chosen metric, and the loss that breaks its ties (see rank_units)."""
        return (self.metric,) if self.metric == "loss" else (self.metric, "loss")

    def values(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> dict[str, float]:
        return {m: metric_value(m, self.task, image_emb, text_emb, self.scale) for m in self.metrics}

    def row(self, unit: Unit, base: dict[str, float], ablated_values: dict[str, float]) -> dict:
        row = {"tower": unit.tower, "kind": unit.kind, "layer": unit.layer, "index": unit.index,
               "unit": unit.name, "mope": self.sign * (base[self.metric] - ablated_values[self.metric]),
               "base": base[self.metric], "ablated": ablated_values[self.metric]}
        if self.metric != "loss":
            row["mope_loss"] = ablated_values["loss"] - base["loss"]
        return row

    def run(self, units: list[Unit], progress: Progress | None, should_stop, done: list[dict] | None = None,
            on_group: Callable[[list[dict]], None] | None = None) -> list[dict]:
        """The rows of `units` after `done` (rows of a sweep's earlier groups); on_group gets each group's rows."""
        rows: list[dict] = list(done or [])
        time_left, before, total = TimeLeft(), len(rows), len(rows) + len(units)
        self.should_stop = should_stop
        with torch.inference_mode(), self.autocast():
            for chunk in self.chunks(units):
                try:
                    self.check_stop()
                    new = self.score_chunk(chunk)
                except _Stopped:
                    kept = "; the finished layers' work is cached: a restart continues from it" if on_group else ""
                    raise Cancelled(rows, f"stopped after {len(rows)} of {total} units{kept}") from None
                rows += new
                if on_group:
                    on_group(new)
                if progress:
                    progress(len(rows), total, time_left(len(rows) - before, len(units)), rows)
        return rows

    def check_stop(self) -> None:
        if self.should_stop and self.should_stop():
            raise _Stopped


class _Stopped(Exception):
    """should_stop() said so in the middle of a unit group; run() turns it into Cancelled(rows so far)."""


class NaiveScorer(_Scorer):
    """The reference: a full evaluation of the model with each unit ablated in its weights."""

    def chunks(self, units):
        if units:
            self.base = self.values(*self.embed())
        return [[u] for u in units]

    def embed(self) -> tuple[torch.Tensor, torch.Tensor]:
        return image_embeddings(self.clip, self.task), task_text_embeddings(self.clip, self.task)

    def score_chunk(self, chunk: list[Unit]) -> list[dict]:
        with ablated(self.clip.model, chunk, self.group_sizes):
            return [self.row(chunk[0], self.base, self.values(*self.embed()))]


class FastScorer(_Scorer):
    """Other tower once, the calibration set in chunks, batched ablations of one layer per chunk.

    Per chunk, the hidden state entering a unit's layer (a forward stopped there) is re-run from that
    layer with the unit ablated; what the metric needs is kept per image (hits / loss) or, where the
    metric needs the whole set (retrieval, the text tower's classifier), per unit for one layer's units.
    One chunk covering the whole set keeps every layer's hidden state from a single forward instead.
    """

    def __init__(self, clip: Clip, task: Task, metric: str, group_sizes: dict[str, int], precision: str,
                 batch_tokens: int | None = None, chunk: int | None = None, classifier: torch.Tensor | None = None):
        super().__init__(clip, task, metric, group_sizes, precision)
        self.batch_tokens, self.chunk = pass_tokens(clip, batch_tokens=batch_tokens), chunk
        self.known_classifier = classifier if task.protocol == "zeroshot" else None  # see score(classifier=)
        self.state: dict[str, dict] = {}
        self.precision = precision

    def chunks(self, units):
        return [list(g) for _, g in itertools.groupby(units, key=lambda u: (u.tower, u.layer))]

    def tower_state(self, tower: str) -> dict:
        """Chunked inputs, the other tower's embeddings, the unablated outcome and value, and the unablated
        per-sample outputs (`own`: what collect keeps, every sample in task order)."""
        if tower in self.state:
            return self.state[tower]
        clip, task = self.clip, self.task
        inputs = TowerInputs(clip, task, tower, self.chunk or auto_chunk(clip.model, tower, self.batch_tokens), MIN_ROWS)
        if tower == "vision":
            other = self.known_classifier if self.known_classifier is not None else task_text_embeddings(clip, task)
        else:
            other = image_embeddings(clip, task)
        state = {"inputs": inputs, "other": other}
        pieces = []
        for span in inputs.spans:
            batch = inputs.batch(*span)
            if len(inputs.spans) == 1:
                own, inputs.hidden = self.forward_keeping_hidden(tower, batch)
            else:
                own = self.encode(tower, batch)
            pieces.append(self.collect(tower, state, inputs, own, span))
        state["own"] = torch.cat(pieces)
        # the tie-break's (loss) per-image shares too: the stability bootstrap resamples them (see unit_row)
        state["base"], state["shares"] = self.finish(tower, state, [state["own"]], self.metrics)
        state["contributions"] = state["shares"][self.metric]
        self.state[tower] = state
        return state

    def forward_keeping_hidden(self, tower: str, batch: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hidden: list[torch.Tensor] = []
        hooks = [b.register_forward_pre_hook(lambda m, args: hidden.append(args[0]))
                 for b in tower_blocks(self.clip.model, tower)]
        try:
            return self.encode(tower, batch), hidden
        finally:
            for h in hooks:
                h.remove()

    def hidden_at(self, tower: str, inputs: "TowerInputs", batch: torch.Tensor, layer: int) -> torch.Tensor:
        """The hidden state entering block `layer` for one chunk: kept from one forward when the inputs are one
        chunk, else a forward stopped there."""
        if inputs.hidden is None and len(inputs.spans) == 1:
            inputs.hidden = self.forward_keeping_hidden(tower, batch)[1]
        if inputs.hidden is not None:
            return inputs.hidden[layer]
        seen: list[torch.Tensor] = []

        def stop(module, args):
            seen.append(args[0])
            raise _Reached

        hook = tower_blocks(self.clip.model, tower)[layer].register_forward_pre_hook(stop)
        try:
            self.encode(tower, batch)
        except _Reached:
            pass
        finally:
            hook.remove()
        return seen[0]

    def encode(self, tower: str, inputs: torch.Tensor) -> torch.Tensor:
        model = self.clip.model
        emb = model.encode_image(inputs, normalize=True) if tower == "vision" else model.encode_text(inputs, normalize=True)
        return emb.float().cpu()

    def collect(self, tower: str, state: dict, inputs: "TowerInputs", emb: torch.Tensor,
                span: tuple[int, int]) -> torch.Tensor:
        """What one chunk's (padded) embeddings leave for the metrics: per-image stats (images × metrics) or
        the embeddings. Row by row: a sample's result does not depend on the chunk it came in."""
        start, stop = span
        if tower == "vision" and self.task.protocol == "zeroshot":
            labels = inputs.labels(start, stop)
            return torch.stack([zeroshot_stats(m, emb, state["other"], labels, self.scale)
                                for m in self.metrics], 1)[:stop - start]
        return emb[:stop - start]

    def finish(self, tower: str, state: dict, pieces: list[torch.Tensor],
               shares: Sequence[str] | None = None) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """The metric values and, per metric in `shares` (by default the chosen one), the per-image contributions
        (their mean is the metric)."""
        task, own, shares = self.task, torch.cat(pieces), shares or (self.metric,)
        if task.protocol == "zeroshot":
            labels = task.labels
            if tower == "text":
                classifier = ensemble(own, len(task.classnames))
                own = torch.stack([zeroshot_stats(m, state["other"], classifier, labels, self.scale)
                                   for m in self.metrics], 1)
            values = {m: zeroshot_value(m, own[:, i].contiguous(), labels) for i, m in enumerate(self.metrics)}
            return values, {m: zeroshot_contributions(m, own[:, self.metrics.index(m)].contiguous(), labels)
                            for m in shares}
        image_emb, text_emb = (own, state["other"]) if tower == "vision" else (state["other"], own)
        return (self.values(image_emb, text_emb),
                {m: retrieval_contributions(m, task, image_emb, text_emb, self.scale) for m in shares})

    def score_chunk(self, group: list[Unit]) -> list[dict]:
        state = self.tower_state(group[0].tower)
        outputs = self.sample_outputs(group, state["inputs"])
        return [self.unit_row(unit, state, [outputs[unit]]) for unit in group]

    def classifier(self) -> torch.Tensor | None:
        """A zero-shot task's class embeddings as the vision tower's scoring uses them (for score(classifier=));
        None for a retrieval task (a subset of its images has its own captions)."""
        return self.tower_state("vision")["other"] if self.task.protocol == "zeroshot" else None

    def image_losses(self, tower: str) -> torch.Tensor:
        """Per image, its unablated loss: the zero-shot cross-entropy, or its share of the contrastive loss."""
        state = self.tower_state(tower)
        if self.task.protocol == "zeroshot":
            return state["own"][:, -1].clone()  # the vision tower's stats: the loss comes last (see metrics)
        image_emb, text_emb = (state["own"], state["other"]) if tower == "vision" else (state["other"], state["own"])
        return retrieval_contributions("loss", self.task, image_emb, text_emb, self.scale)

    def image_order(self, tower: str, losses: torch.Tensor) -> torch.Tensor:
        """Task positions, the images anytime scoring runs first first. A hit metric (acc1, acc5, per-class recall) of
        the zero-shot vision tower: the images nearest the decision, by the two-class margin their loss amounts to,
        |log(1 / (e^loss − 1))| (where removing a unit flips an outcome); else the highest loss first."""
        if tower == "vision" and self.task.protocol == "zeroshot" and self.metric != "loss":
            return torch.argsort(torch.log(torch.expm1(losses.double())).abs(), stable=True)
        return torch.argsort(-losses, stable=True)

    def sample_outputs(self, group: list[Unit], inputs: "TowerInputs") -> dict[Unit, torch.Tensor]:
        """Per unit of one layer, what its ablation leaves for the metric (collect) on each sample of `inputs`,
        in their order; the same numbers, bit for bit, whatever samples share a chunk (anytime scoring adds
        samples to a unit's outputs round by round)."""
        tower, layer = group[0].tower, group[0].layer
        state = self.tower_state(tower)
        pieces: dict[Unit, list[torch.Tensor]] = {u: [] for u in group}
        for n, span in enumerate(inputs.spans):
            batch = inputs.batch(*span)
            x = self.hidden_at(tower, inputs, batch, layer)
            k = max(1, self.batch_tokens // (x.shape[0] * x.shape[1]))
            for i in range(0, len(group), k):
                if n or i:
                    self.check_stop()  # between batched passes: a stop waits for one pass at most
                part = group[i:i + k]
                emb = self.ablate(tower, layer, part, x, batch)
                for j, unit in enumerate(part):
                    pieces[unit].append(self.collect(tower, state, inputs, emb[j * len(x):(j + 1) * len(x)], span))
        return {unit: torch.cat(p) for unit, p in pieces.items()}

    def unit_row(self, unit: Unit, state: dict, pieces: list[torch.Tensor]) -> dict:
        value, shares = self.finish(unit.tower, state, pieces, self.metrics)
        self.per_image[unit.name] = self.sign * (state["contributions"] - shares[self.metric])
        if self.metric != "loss":
            self.per_image_loss[unit.name] = shares["loss"] - state["shares"]["loss"]
        return self.row(unit, state["base"], value)

    def ablate(self, tower: str, layer: int, units: list[Unit], x: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """Embeddings of one chunk with each unit removed in turn: (len(units) × rows, D)."""
        block = tower_blocks(self.clip.model, tower)[layer]
        m, k = x.shape[0], len(units)
        head_mask = torch.ones(k, block.attn.num_heads, device=x.device)
        neuron_mask = torch.ones(k, block.mlp.c_fc.out_features, device=x.device)
        skip = torch.zeros(k, dtype=torch.bool, device=x.device)
        for i, unit in enumerate(units):
            if unit.kind == "head":
                head_mask[i, unit.index] = 0
            elif unit.kind == "neurons":
                g = self.group_sizes[tower]
                neuron_mask[i, unit.index * g:(unit.index + 1) * g] = 0
            else:
                skip[i] = True
        first = MaskedBlock(block, x.repeat(k, 1, 1), head_mask.repeat_interleave(m, 0),
                            neuron_mask.repeat_interleave(m, 0), skip.repeat_interleave(m, 0))
        with starting_at(self.clip.model, tower, first, layer):
            return self.encode(tower, batch if tower == "vision" else batch.repeat(k, 1))


class _Reached(Exception):
    """Stops a forward pass at the block whose input is wanted."""


@torch.inference_mode()
def projected_seconds(clip: Clip, task: Task, towers: Sequence[str] = TOWERS, units: Sequence[str] = KINDS,
                      samples: int = 4) -> float:
    """About how long the exact fast sweep would take here: sweep_cost × one block's time per input, measured
    on a few inputs (noisy on a busy machine; for choosing a schedule, not for benchmarks)."""
    return sum(block_inputs * block_seconds(clip, tower, samples)
               for tower, block_inputs in sweep_cost(clip, task, towers, units).items())


@torch.inference_mode()
def block_seconds(clip: Clip, tower: str, samples: int = MIN_ROWS) -> float:
    """Seconds one block of the tower takes per input here, timed on `samples` inputs after a warm-up."""
    block = tower_blocks(clip.model, tower)[0]
    x = torch.zeros(samples, tokens_of(clip.model, tower), block.attn.embed_dim, device=clip.device)
    block(x)  # warm-up (the text tower's causal mask costs about nothing: left out)
    start = time.perf_counter()
    block(x)
    return (time.perf_counter() - start) / samples


def sweep_cost(clip: Clip, task: Task, towers: Sequence[str] = TOWERS, units: Sequence[str] = KINDS) -> dict[str, int]:
    """Per tower, the block passes the exact sweep runs, in inputs: for every unit, the blocks it re-runs ×
    the tower's inputs (images, or prompts / captions)."""
    group_sizes = check_group_size(clip.model, towers, None)
    cost = {}
    for tower in towers:
        layers = len(tower_blocks(clip.model, tower))
        inputs = len(task) if tower == "vision" else len(task_texts(task))
        cost[tower] = sum(layers - u.layer for u in enumerate_units(clip.model, [tower], units, group_sizes)) * inputs
    return cost


def auto_chunk(model: torch.nn.Module, tower: str, batch_tokens: int) -> int:
    """Samples per chunk by default: as many as one batched ablation pass holds (at least MIN_ROWS)."""
    return max(MIN_ROWS, batch_tokens // tokens_of(model, tower))


class TowerInputs:
    """One tower's calibration inputs (images, or the tokenised prompts / captions) in chunks of `size`:
    all of them, or those at `index` (task positions, in that order).

    Every chunk is padded to `rows` rows (copies of its last row, dropped afterwards): CPU matrix products
    over fewer than MIN_ROWS rows take other kernels that round differently, and chunking must not change a
    bit. `hidden` keeps every block's input when the inputs are one chunk (from its first forward).
    """

    def __init__(self, clip: Clip, task: Task, tower: str, size: int, rows: int = MIN_ROWS,
                 index: torch.Tensor | None = None, tokens: torch.Tensor | None = None):
        self.clip, self.task, self.tower, self.rows, self.size = clip, task, tower, rows, size
        self.tokens = tokens if tokens is not None or tower == "vision" else clip.tokenizer(task_texts(task))
        n = len(task) if tower == "vision" else len(self.tokens)
        self.index = torch.arange(n) if index is None else index
        self.spans = [(s, min(s + size, len(self.index))) for s in range(0, len(self.index), size)]
        self.hidden: list[torch.Tensor] | None = None

    def subset(self, index: torch.Tensor, rows: int | None = None, length: int | None = None) -> "TowerInputs":
        """The inputs at `index` (task positions), chunked alike, padded alike or to `rows` (1: unpadded); text
        tokens cut to their first `length` columns when given (mope.short_text)."""
        tokens = self.tokens if length is None else self.tokens[:, :length]
        return TowerInputs(self.clip, self.task, self.tower, self.size, rows or self.rows, index, tokens)

    def batch(self, start: int, stop: int) -> torch.Tensor:
        at = self.index[start:stop]
        if self.tower == "vision":
            x = torch.stack([self.clip.preprocess(self.task.pil_image(int(i))) for i in at])
        else:
            x = self.tokens[at]
        return self.padded(x).to(self.clip.device)

    def labels(self, start: int, stop: int) -> torch.Tensor:
        return self.padded(self.task.labels[self.index[start:stop]])

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        return x if len(x) >= self.rows else torch.cat([x, x[-1:].expand(self.rows - len(x), *x.shape[1:])])


# --- baselines ------------------------------------------------------------------------------------------

def unit_table(clip: Clip, towers: Sequence[str] = TOWERS, units: Sequence[str] = KINDS,
               group_size: int | None = None, baselines: Sequence[str] | None = None,
               task: Task | None = None, seed: int = 0) -> pd.DataFrame:
    """The units with their sizes and baseline scores, without MoPE (cheap). Default baselines: those that
    need no task (magnitude, random); Taylor needs `task`."""
    baselines = importance.baselines(needs_task=False) if baselines is None else baselines
    group_sizes = check_group_size(clip.model, towers, group_size)
    todo = enumerate_units(clip.model, towers, units, group_sizes)
    rows = [{"tower": u.tower, "kind": u.kind, "layer": u.layer, "index": u.index, "unit": u.name} for u in todo]
    for row, extra in zip(rows, unit_rows(clip, task, todo, group_sizes, baselines, seed)):
        row.update(extra)
    df = pd.DataFrame(rows)
    df.attrs.update(model=model_fingerprint(clip.model), group_sizes=group_sizes)
    return df


def unit_rows(clip: Clip, task: Task | None, units: list[Unit], group_sizes: dict[str, int],
              baselines: Sequence[str], seed: int) -> list[dict]:
    """Per unit: params, flops and the requested baseline scores."""
    model = clip.model
    rows = [{"params": unit_params(model, u, group_sizes[u.tower]), "flops": unit_flops(model, u, group_sizes[u.tower])}
            for u in units]
    for name in importance.check_baselines(baselines):
        for row, value in zip(rows, importance.criterion(name)(clip, units, group_sizes, task=task, seed=seed)):
            row[name] = value
    return rows


def baseline_correlations(df: pd.DataFrame) -> pd.DataFrame:
    """Spearman rank correlation between MoPE and each baseline, per tower and unit kind."""
    present = [b for b in importance.baselines() if b in df.columns]
    out = []
    for (tower, kind), g in df.groupby(["tower", "kind"], sort=False):
        row = {"tower": tower, "kind": kind, "units": len(g)}
        for b in present:
            row[b] = g["mope"].corr(g[b], method="spearman") if len(g) > 1 else float("nan")
        out.append(row)
    return pd.DataFrame(out)


@importance.register("mope", label="MoPE", needs_task=True, baseline=False)
def mope_importance(clip: Clip, units: Sequence[Unit], group_sizes: dict[str, int], task: Task | None = None,
                    seed: int = 0) -> list[float]:
    """The drop in the task's default metric when the unit is removed (exact ablation, the fast path)."""
    metric = default_metric(task)
    check_metric(task, metric)
    return [r["mope"] for r in FastScorer(clip, task, metric, group_sizes, "fp32").run(list(units), None, None)]


# --- files and many processes ----------------------------------------------------------------------------

def save_scores(df: pd.DataFrame, path) -> None:
    """CSV with the fingerprint as a leading comment line; written atomically."""
    from .io import atomic_write_text

    header = "".join(f"# {k}: {json.dumps(v)}\n" for k, v in sorted(df.attrs.items()))
    atomic_write_text(path, header + df.to_csv(index=False))


def load_scores(path) -> pd.DataFrame:
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise MopeError(f"scores file not found: {path}")
    attrs = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.startswith("# "):
                break
            key, _, value = line[2:].partition(":")
            try:
                attrs[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                raise MopeError(f"{path}: unreadable header line {line.strip()!r}") from None
    try:
        df = pd.read_csv(path, comment="#")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise MopeError(f"{path} is not a scores CSV ({e})") from None
    df = _checked_table(df, path)
    df.attrs.update(attrs)
    return df


REQUIRED_COLUMNS = ("tower", "kind", "layer", "index", "unit", "mope", "params")
NUMBER_COLUMNS = ("base", "ablated", "mope_loss", "flops", "images_used", "texts_used", "se", "round", "rank")  # may be empty


def _checked_table(df: pd.DataFrame, path) -> pd.DataFrame:
    """A scores table read from a file (maybe edited by hand), checked: the columns score() writes, towers
    and kinds known, layer / index whole numbers ≥ 0, scores and params numbers (criteria and the other
    number columns numbers or empty); a MopeError naming the first bad row otherwise."""
    from . import importance

    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise MopeError(f"{path} is not a scores CSV from 'score': missing columns {missing}")
    if df.empty:
        raise MopeError(f"{path} has no rows: score the model again")
    df = df.copy()
    for column, allowed in (("tower", TOWERS), ("kind", KINDS)):
        _refuse_rows(path, df, ~df[column].isin(allowed), column, f"one of {', '.join(allowed)}")
    numbers = [c for c in df.columns if c in ("layer", "index", "mope", "params", *NUMBER_COLUMNS, *importance.names())]
    for column in numbers:
        values = pd.to_numeric(df[column], errors="coerce").astype(float)
        bad = ~np.isfinite(values) if column in REQUIRED_COLUMNS else values.isna() & df[column].notna()
        if column in ("layer", "index"):
            bad |= (values < 0) | (values % 1 != 0)
        whole = column in ("layer", "index")
        _refuse_rows(path, df, bad, column, "a whole number ≥ 0" if whole else "a number")
        if not pd.api.types.is_numeric_dtype(df[column]):  # numbers read as text (a hand edit): as numbers
            df[column] = values.astype(int) if whole else values
    return df


def _refuse_rows(path, df: pd.DataFrame, bad: pd.Series, column: str, what: str) -> None:
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise MopeError(f"{path}, data row {row + 1}: {column} must be {what}, got "
                        f"{str(df[column].iloc[row])!r}; fix the file or score the model again")


def score_distributed(clip: Clip, task: Task, **kw) -> pd.DataFrame | None:
    """score() across torchrun processes: each rank scores units[rank::world], rank 0 gathers.

    Without torchrun (WORLD_SIZE unset or 1) this is score(). Other ranks return None.
    """
    import os

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return score(clip, task, **kw)
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if clip.device.type == "cuda" else "gloo")
    rank = dist.get_rank()
    if rank != 0:
        kw["progress"] = None
    try:
        part = score(clip, task, shard=(rank, world), **kw)
        parts = [None] * world if rank == 0 else None
        dist.gather_object(part.to_dict("records"), parts, dst=0)
    finally:
        if own_group:
            dist.destroy_process_group()
    if rank != 0:
        return None
    rows = [None] * sum(len(p) for p in parts)
    for r, p in enumerate(parts):
        rows[r::world] = p
    full = pd.DataFrame(rows)
    full["rank"] = rank_units(full)  # each part ranked only its own units
    full.attrs.update(part.attrs)
    return full
