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
import time
from contextlib import nullcontext
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from . import importance
from .ablation import MaskedBlock, ablated, starting_at
from .anytime import check_schedule, first_round_size, next_round, standard_error
from .cache import key_of, model_fingerprint, open_cache
from .clip import Clip
from .data.tasks import Task
from .errors import MopeError
from .evaluate import (
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
from .progress import TimeLeft
from .ranking import rank_units
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

TOKEN_BUDGET = 2**17  # tokens per batched ablation pass; bounds memory, not results
ACTIVATIONS = 8  # residual-width tensors alive at once in a block pass (x, ln, q, k, v, attention, out, y)
FIRST_ROUND_MIN = 8  # images per unit in anytime's first round, at least (default: a sixteenth of the set)
MIN_ROWS = 16  # CPU matmuls over fewer rows round differently (MKL small-M kernels): chunks are padded to this

Progress = Callable[[int, int, float | None, list[dict]], None]


class Cancelled(MopeError):
    """Raised when should_stop() says so; `rows` holds the units scored so far (anytime: the last table)."""

    def __init__(self, rows: list[dict], message: str | None = None):
        super().__init__(message or f"cancelled after {len(rows)} units")
        self.rows = rows


def score(clip: Clip, task: Task, towers: Sequence[str] = TOWERS, units: Sequence[str] = KINDS,
          metric: str | None = None, impl: str = "fast", group_size: int | None = None,
          baselines: Sequence[str] | None = None, seed: int = 0, precision: str = "fp32", cache: bool = True,
          progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
          shard: tuple[int, int] | None = None, batch_tokens: int = TOKEN_BUDGET,
          chunk: int | None = None, max_memory: float | None = None, schedule: str = "exact",
          first_round: int | None = None) -> pd.DataFrame:
    """One row per unit: tower, kind, layer, index, unit, mope, base, ablated, params, flops, baselines,
    images_used, se (standard error of mope over images; 0 on the whole set), mope_loss and rank.

    shard=(rank, world) scores units[rank::world] only (for torchrun); rows keep the global order.
    batch_tokens bounds the tokens of one batched ablation pass, chunk the images (or texts) held at once;
    max_memory (GiB) sets batch_tokens from a memory cap (see memory_tokens). None of them changes a result.
    schedule="anytime" scores every unit on first_round images, then refines in rounds (see mope.anytime):
    progress gets the whole table after each round, the table's attrs["anytime"] says where it stands.
    """
    metric, group_sizes, fingerprint, model_fp, key = _settle(clip, task, towers, units, metric, impl, group_size,
                                                               baselines, seed, precision, shard)
    batch_tokens = _check_memory(clip, towers, batch_tokens, chunk, max_memory)
    _check_schedule(schedule, impl, shard)
    all_units = enumerate_units(clip.model, towers, units, group_sizes)
    todo = all_units if shard is None else all_units[shard[0]::shard[1]]
    extras = functools.partial(unit_rows, clip, task, todo, group_sizes, baselines, seed)
    frame = functools.partial(_frame, fingerprint=fingerprint, model_fp=model_fp, metric=metric, group_sizes=group_sizes)
    hit = _cached_rows(key) if cache else None
    if hit is not None:
        return frame(hit, anytime={"done": True, "images": len(task)}) if schedule == "anytime" else frame(hit)
    if impl == "naive":
        scorer = NaiveScorer(clip, task, metric, group_sizes, precision)
    else:
        scorer = FastScorer(clip, task, metric, group_sizes, precision, batch_tokens, chunk)
    if schedule == "anytime":
        rounds = _Anytime(scorer, todo, key if cache else None, first_round)
        rows = rounds.run(extras, progress, should_stop)
        info, per_image_rows = {"anytime": {"done": True, "images": len(task),
                                            "round": max((r["round"] for r in rows), default=0)}}, rounds.per_image
    else:
        rows, info = _exact_rows(scorer.run(todo, progress, should_stop), len(task), extras()), {}
        per_image_rows = scorer.per_image if impl == "fast" else None
    if cache:
        _store(key, [{k: v for k, v in r.items() if k != "round"} for r in rows], per_image_rows)
    return frame(rows, **info)


def _exact_rows(rows: list[dict], n_images: int, extras: list[dict]) -> list[dict]:
    for row, extra in zip(rows, extras):
        row.update(extra, images_used=n_images, se=0.0, estimate=False)
    return rows


def _store(key: str, rows: list[dict], per_image_rows: dict | None) -> None:
    with open_cache("scores") as store:
        store.set(key, rows)
        if per_image_rows is not None:
            store.set(f"{key}/per_image", _per_image_record(per_image_rows, rows))


def _check_schedule(schedule: str, impl: str, shard) -> None:
    check_schedule(schedule)
    if schedule == "anytime" and (impl != "fast" or shard is not None):
        raise MopeError("anytime scoring runs the fast path in one process: use impl='fast' and no shard / torchrun")


class _Anytime:
    """The rounds of anytime scoring (the schedule is mope.anytime). Each round scores its units on the first
    n images of a fixed draw (Task.subset: nested, the whole set at the end) from scratch, so a unit's last
    round is the exact sweep. The text tower of a zero-shot task runs on its prompts whatever the images:
    its units are scored on every image from round 1. The table after each round is cached: a restart
    continues from it."""

    def __init__(self, scorer: "FastScorer", units: list[Unit], key: str | None, first_round: int | None):
        self.scorer, self.task, self.units, self.key = scorer, scorer.task, units, key
        self.total = len(self.task)
        self.first = first_round_size(self.total, first_round, FIRST_ROUND_MIN)
        self.whole = {u.name for u in units if u.tower == "text" and self.task.kind == "zeroshot"}
        self.extra: dict[str, dict] = {}  # params, flops, baselines per unit (a resumed run's rows have them)
        self.per_image: dict[str, torch.Tensor] = {}  # units scored on every image: their per-image MoPE

    def run(self, extras, progress: Progress | None, should_stop) -> list[dict]:
        state = self.load()
        if state is not None:
            self.per_image = {k: torch.from_numpy(np.frombuffer(v, dtype=np.float32).copy())
                              for k, v in state["per_image"].items()}
        else:
            self.extra = {u.name: extra for u, extra in zip(self.units, extras())}
            fresh = self.round(self.units, self.first, 1, progress, should_stop)
            state = self.advance({"round": 0, "rows": fresh}, fresh, self.first, progress)
        while True:
            todo, size = next_round(pd.DataFrame(state["rows"]), self.total, state["size"])
            if not size:
                return state["rows"]
            chosen = [u for u, pick in zip(self.units, todo) if pick]
            state = self.advance(state, self.round(chosen, size, state["round"] + 1, None, should_stop, state), size,
                                 progress)

    def round(self, units: list[Unit], size: int, number: int, progress, should_stop, state: dict | None = None):
        """Rows of `units` scored on `size` images (the zero-shot text tower on all), in unit order; progress
        (round 1) gets the rows so far as they come."""
        rows: dict[str, dict] = {}
        parts = [(self.task, [u for u in units if u.name in self.whole]),
                 (self.task.subset(size), [u for u in units if u.name not in self.whole])]
        for sub, part in parts:
            if not part:
                continue
            scorer = self.scorer.on(sub, pad=len(sub) == self.total)  # estimates need not be bit-stable

            def inner(done, total, eta, got, scorer=scorer, shift=len(rows)):
                progress((shift + done) * size, len(self.units) * self.total, None,
                         list(rows.values()) + [self.annotate(r, scorer, number) for r in got])

            try:
                got = scorer.run(part, inner if progress else None, should_stop)
            except Cancelled as stop:
                partial = list(rows.values()) + [self.annotate(r, scorer, number) for r in stop.rows]
                raise self.stopped(number, state, partial) from None
            rows.update((r["unit"], self.annotate(r, scorer, number)) for r in got)
            if len(sub) == self.total:
                self.per_image.update((r["unit"], scorer.per_image[r["unit"]].float()) for r in got)
        return [rows[u.name] for u in units]

    def annotate(self, row: dict, scorer: "FastScorer", number: int) -> dict:
        """A fresh row with what the round knows about it: images used, standard error, estimate or not."""
        n = len(scorer.task)
        se = standard_error(scorer.per_image[row["unit"]].numpy(), self.total)
        return {**row, **self.extra.get(row["unit"], {}), "images_used": n, "se": se,
                "estimate": n < self.total, "round": number}

    def stopped(self, number: int, state: dict | None, partial: list[dict]) -> Cancelled:
        if state is None:
            return Cancelled(partial, f"stopped in round 1 of anytime scoring: {len(partial)} of {len(self.units)} "
                                      f"units have a first estimate (kept in this error's rows, not cached); "
                                      "a restart scores round 1 again")
        return Cancelled(state["rows"], f"stopped in round {number} of anytime scoring: the table of round "
                                        f"{number - 1} is kept and cached; a restart continues from it")

    def advance(self, state: dict, fresh: list[dict], size: int, progress) -> dict:
        """The next state: fresh rows replace their units' estimates; cached; reported as a whole table."""
        by_name = {r["unit"]: r for r in fresh}
        rows = [{**row, **by_name[row["unit"]]} if row["unit"] in by_name else row for row in state["rows"]] \
            if state["round"] else fresh
        state = {"round": state["round"] + 1, "size": size, "rows": rows,
                 "per_image": {k: v.numpy().tobytes() for k, v in self.per_image.items()}}
        if self.key:
            with open_cache("scores") as store:
                store.set(f"{self.key}/anytime", state)
        if progress:
            used = sum(r["images_used"] for r in rows)
            progress(used, len(self.units) * self.total, None, rows)
        return state

    def load(self) -> dict | None:
        if not self.key:
            return None
        with open_cache("scores") as store:
            return store.get(f"{self.key}/anytime")


def per_image(scores: pd.DataFrame) -> pd.DataFrame | None:
    """The per-image MoPE behind a cached (fast) scores table: one row per unit, one column per calibration image
    (task order); a row's mean is its mope (for every zero-shot metric and for retrieval; to float rounding).
    None when the cache does not hold them (impl='naive', cache=False, or another machine's table)."""
    with open_cache("scores") as store:
        record = store.get(f"{scores.attrs.get('fingerprint')}/None/per_image")
    if record is None:
        return None
    matrix = np.frombuffer(record["matrix"], dtype=np.float32).reshape(len(record["units"]), -1)
    return pd.DataFrame(matrix, index=pd.Index(record["units"], name="unit"))


def _per_image_record(per_image_rows: dict[str, torch.Tensor], rows: list[dict]) -> dict:
    names = [r["unit"] for r in rows]
    matrix = torch.stack([per_image_rows[n].float() for n in names]) if names else torch.zeros(0, 0)
    return {"units": names, "matrix": matrix.numpy().tobytes()}


def _check_memory(clip: Clip, towers: Sequence[str], batch_tokens: int, chunk: int | None,
                  max_memory: float | None) -> int:
    """The tokens per ablation pass: batch_tokens, or what max_memory (GiB) allows; clear errors for bad knobs."""
    if chunk is not None and chunk <= 0:
        raise MopeError(f"chunk must be a positive number of images per chunk, got {chunk}")
    if max_memory is None:
        return batch_tokens
    if max_memory <= 0:
        raise MopeError(f"max_memory must be a positive number of GiB, got {max_memory}")
    return min(memory_tokens(clip.model, t, max_memory) for t in towers)


def memory_tokens(model: torch.nn.Module, tower: str, max_memory: float) -> int:
    """Tokens per ablation pass that fit max_memory GiB: one pass holds about
    tokens × width × (ACTIVATIONS + ffn/width) floats (see the README's memory formula)."""
    block = tower_blocks(model, tower)[0]
    width, ffn = block.attn.embed_dim, block.mlp.c_fc.out_features
    per_token = 4 * (ACTIVATIONS * width + 2 * ffn)
    return max(tokens_of(model, tower), int(max_memory * 2**30 // per_token))


def cached_scores(clip: Clip, task: Task, towers: Sequence[str] = TOWERS, units: Sequence[str] = KINDS,
                  metric: str | None = None, impl: str = "fast", group_size: int | None = None,
                  baselines: Sequence[str] | None = None, seed: int = 0, precision: str = "fp32") -> pd.DataFrame | None:
    """What score() with these arguments would return from the cache, or None when it would compute."""
    metric, group_sizes, fingerprint, model_fp, key = _settle(clip, task, towers, units, metric, impl, group_size,
                                                               baselines, seed, precision, None)
    hit = _cached_rows(key)
    return None if hit is None else _frame(hit, fingerprint, model_fp, metric, group_sizes)


def _settle(clip, task, towers, units, metric, impl, group_size, baselines, seed, precision, shard):
    """Checked settings and their keys: (metric, group sizes, scores fingerprint, model fingerprint, cache key)."""
    metric = metric or default_metric(task)
    group_sizes = _validate(clip, task, towers, units, metric, impl, baselines, precision, group_size)
    settings = dict(towers=list(towers), units=list(units), metric=metric, impl=impl, group_sizes=group_sizes,
                    baselines=list(importance.check_baselines(baselines)), seed=seed, precision=precision)
    model_fp = model_fingerprint(clip.model)
    fingerprint = key_of(model=model_fp, task=task.fingerprint(), **settings)
    return metric, group_sizes, fingerprint, model_fp, f"{fingerprint}/{shard}"


def _cached_rows(key: str) -> list[dict] | None:
    with open_cache("scores") as store:
        return store.get(key)


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

    def run(self, units: list[Unit], progress: Progress | None, should_stop) -> list[dict]:
        rows: list[dict] = []
        time_left = TimeLeft()
        self.should_stop = should_stop
        with torch.inference_mode(), self.autocast():
            for chunk in self.chunks(units):
                try:
                    self.check_stop()
                    rows += self.score_chunk(chunk)
                except _Stopped:
                    raise Cancelled(rows) from None
                if progress:
                    progress(len(rows), len(units), time_left(len(rows), len(units)), rows)
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
                 batch_tokens: int = TOKEN_BUDGET, chunk: int | None = None, pad: bool = True):
        super().__init__(clip, task, metric, group_sizes, precision)
        self.batch_tokens, self.chunk, self.pad = batch_tokens, chunk, pad
        self.state: dict[str, dict] = {}
        self.per_image: dict[str, torch.Tensor] = {}  # unit name → per-image MoPE (mean over images ≈ mope)
        self.precision = precision

    def on(self, task: Task, pad: bool = True) -> "FastScorer":
        """The same scorer for another task (a subset of the calibration set); pad=False: estimates only."""
        return FastScorer(self.clip, task, self.metric, self.group_sizes, self.precision, self.batch_tokens, self.chunk,
                          pad)

    def chunks(self, units):
        return [list(g) for _, g in itertools.groupby(units, key=lambda u: (u.tower, u.layer))]

    def tower_state(self, tower: str) -> dict:
        """Chunked inputs, the other tower's embeddings, the unablated outcome and value."""
        if tower in self.state:
            return self.state[tower]
        clip, task = self.clip, self.task
        inputs = TowerInputs(clip, task, tower, self.chunk or auto_chunk(clip.model, tower, self.batch_tokens),
                             MIN_ROWS if self.pad else 1)
        other = task_text_embeddings(clip, task) if tower == "vision" else image_embeddings(clip, task)
        state = {"inputs": inputs, "other": other, "hidden": None}
        pieces = []
        for span in inputs.spans:
            batch = inputs.batch(*span)
            if len(inputs.spans) == 1:
                own, state["hidden"] = self.forward_keeping_hidden(tower, batch)
            else:
                own = self.encode(tower, batch)
            pieces.append(self.collect(tower, state, own, span))
        state["base"], state["contributions"] = self.finish(tower, state, pieces)
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

    def hidden_at(self, tower: str, state: dict, batch: torch.Tensor, layer: int) -> torch.Tensor:
        """The hidden state entering block `layer` for one chunk: cached, or a forward stopped there."""
        if state["hidden"] is not None:
            return state["hidden"][layer]
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

    def collect(self, tower: str, state: dict, emb: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
        """What one chunk's (padded) embeddings leave for the metrics: per-image stats (images × metrics) or
        the embeddings."""
        start, stop = span
        if tower == "vision" and self.task.kind == "zeroshot":
            labels = state["inputs"].padded(self.task.labels[start:stop])
            return torch.stack([zeroshot_stats(m, emb, state["other"], labels, self.scale)
                                for m in self.metrics], 1)[:stop - start]
        return emb[:stop - start]

    def finish(self, tower: str, state: dict, pieces: list[torch.Tensor]) -> tuple[dict[str, float], torch.Tensor]:
        """The metric values and the chosen metric's per-image contributions (their mean is the metric)."""
        task, own = self.task, torch.cat(pieces)
        if task.kind == "zeroshot":
            labels = task.labels
            if tower == "text":
                classifier = ensemble(own, len(task.classnames))
                own = torch.stack([zeroshot_stats(m, state["other"], classifier, labels, self.scale)
                                   for m in self.metrics], 1)
            values = {m: zeroshot_value(m, own[:, i].contiguous(), labels) for i, m in enumerate(self.metrics)}
            return values, zeroshot_contributions(self.metric, own[:, 0].contiguous(), labels)
        image_emb, text_emb = (own, state["other"]) if tower == "vision" else (state["other"], own)
        return (self.values(image_emb, text_emb),
                retrieval_contributions(self.metric, task, image_emb, text_emb, self.scale))

    def score_chunk(self, group: list[Unit]) -> list[dict]:
        tower, layer = group[0].tower, group[0].layer
        state = self.tower_state(tower)
        pieces: dict[Unit, list[torch.Tensor]] = {u: [] for u in group}
        for n, span in enumerate(state["inputs"].spans):
            if n:
                self.check_stop()
            batch = state["inputs"].batch(*span)
            x = self.hidden_at(tower, state, batch, layer)
            k = max(1, self.batch_tokens // (x.shape[0] * x.shape[1]))
            for i in range(0, len(group), k):
                part = group[i:i + k]
                emb = self.ablate(tower, layer, part, x, batch)
                for j, unit in enumerate(part):
                    pieces[unit].append(self.collect(tower, state, emb[j * len(x):(j + 1) * len(x)], span))
        return [self.unit_row(unit, state, pieces[unit]) for unit in group]

    def unit_row(self, unit: Unit, state: dict, pieces: list[torch.Tensor]) -> dict:
        value, contributions = self.finish(unit.tower, state, pieces)
        self.per_image[unit.name] = self.sign * (state["contributions"] - contributions)
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
    seconds = 0.0
    for tower, block_inputs in sweep_cost(clip, task, towers, units).items():
        block = tower_blocks(clip.model, tower)[0]
        x = torch.zeros(samples, tokens_of(clip.model, tower), block.attn.embed_dim, device=clip.device)
        block(x)  # warm-up (the text tower's causal mask costs about nothing: left out)
        start = time.perf_counter()
        block(x)
        seconds += block_inputs * (time.perf_counter() - start) / samples
    return seconds


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
    """One tower's calibration inputs (images, or the tokenised prompts / captions) in chunks of `size`.

    Every chunk is padded to `rows` rows (copies of its last row, dropped afterwards): CPU matrix products
    over fewer than MIN_ROWS rows take other kernels that round differently, and chunking must not change a
    bit. (Anytime's estimate rounds, on a few images, skip the padding: rows=1.)
    """

    def __init__(self, clip: Clip, task: Task, tower: str, size: int, rows: int = MIN_ROWS):
        self.clip, self.task, self.tower, self.rows = clip, task, tower, rows
        self.tokens = None if tower == "vision" else clip.tokenizer(task_texts(task))
        n = len(task) if tower == "vision" else len(self.tokens)
        self.spans = [(s, min(s + size, n)) for s in range(0, n, size)]

    def batch(self, start: int, stop: int) -> torch.Tensor:
        if self.tower == "vision":
            x = torch.stack([self.clip.preprocess(self.task.pil_image(i)) for i in range(start, stop)])
        else:
            x = self.tokens[start:stop]
        return self.padded(x).to(self.clip.device)

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
    missing = {"tower", "kind", "layer", "index", "unit", "mope"} - set(df.columns)
    if missing:
        raise MopeError(f"{path} is not a scores CSV: missing columns {sorted(missing)}")
    df.attrs.update(attrs)
    return df


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
