"""Endless streams of (image, caption) batches for distillation: the shapes world, a pairs file,
or webdataset .tar shards, read by DataLoader workers.

Batch i is a function of (seed, rank, i) alone — its pairs and its augmentation draws — whatever the
number of workers, so a resumed run sees the same data. Worker k of W makes batches start+k,
start+k+W, …, and the DataLoader hands them out in order. Images are transformed and captions
tokenized in the workers; batches arrive in pinned memory when the model is on a GPU.
"""
from __future__ import annotations

import glob
import io
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import count
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import MopeError
from ..settings import user_path
from ..specs import DataSpec
from . import shapes
from .tasks import _open_rgb, _resolve, read_pairs

Batch = tuple[int, torch.Tensor, list[str]]  # (step, images, captions); with a tokenizer, tokens are added
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def pair_batches(spec: str | DataSpec, transform: Callable, batch_size: int, seed: int = 0, start: int = 0,
                 rank: int = 0, world: int = 1, image_root: str | None = None, tokenizer: Callable | None = None,
                 stop: int | None = None) -> StepBatches:
    """The batches start, start+1, … (up to stop) of `shapes`, `pairs:FILE` or `wds:PATTERN`, as a dataset."""
    spec = training_spec(spec)
    if spec.source == "shapes":
        make = _ShapesBatch(transform, batch_size, seed * 1000 + rank)
        return StepBatches(make, start, stop, tokenizer, spec.text)
    if spec.source == "pairs":
        rows = read_pairs(spec.path)[rank::world]
        if not rows:
            raise MopeError(f"{spec.path} has no rows for process {rank} of {world}")
        root = user_path(image_root) if image_root else user_path(spec.path).parent
        make = _PairsBatch(rows, root, transform, batch_size, seed, rank, spec.path)
        return StepBatches(make, start, stop, tokenizer, spec.text)
    return WebDatasetBatches(spec.path, transform, batch_size, seed, rank, world, start, stop, tokenizer, spec.text)


def pair_stream(spec: str | DataSpec, transform: Callable, batch_size: int, seed: int = 0, start: int = 0,
                rank: int = 0, world: int = 1, image_root: str | None = None) -> Iterator[Batch]:
    """(step, transformed images, captions), read in this process."""
    return iter(BatchLoader(pair_batches(spec, transform, batch_size, seed, start, rank, world, image_root), workers=0))


def training_spec(spec: str | DataSpec) -> DataSpec:
    """The spec of training pairs (shapes, pairs:FILE, wds:PATTERN); a clear error for anything else.
    Its local_path is what to check against allowed folders."""
    return (spec if isinstance(spec, DataSpec) else DataSpec.parse(spec)).for_training()


class StepBatches(torch.utils.data.IterableDataset):
    """Batches start, start+1, … of make(step); in a DataLoader worker, only that worker's share."""

    def __init__(self, make: Callable[[int], tuple], start: int = 0, stop: int | None = None,
                 tokenizer: Callable | None = None, name: str = ""):
        self.make, self.start, self.stop, self.tokenizer, self.name = make, start, stop, tokenizer, name

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        first, every = (self.start + info.id, info.num_workers) if info else (self.start, 1)
        try:
            for step, *batch in self._batches(first, every):
                if self.stop is not None and step >= self.stop:
                    return
                yield (step, *batch, self.tokenizer(batch[-1])) if self.tokenizer else (step, *batch)
        except MopeError as e:  # raised again, message intact, in the main process (not as a worker traceback)
            yield _Failed(str(e))

    def _batches(self, first: int, every: int) -> Iterator[tuple]:
        return (self.make(step) for step in count(first, every))


def dead_worker(error: BaseException, data: str) -> MopeError | None:
    """The MopeError for torch's "DataLoader worker … exited / is killed" (its SIGCHLD handler raises that
    wherever the main process happens to be), else None."""
    if not (isinstance(error, RuntimeError) and "DataLoader worker" in str(error)):
        return None
    return MopeError(f"a data-loading worker reading '{data}' died ({str(error).splitlines()[0]}); "
                     "try fewer --workers, or --workers 0")


class _Failed:
    def __init__(self, message: str):
        self.message = message


class BatchLoader:
    """Iterates a StepBatches through `workers` DataLoader processes (0: in this one), in step order.

    A worker that dies becomes a MopeError naming the data; a MopeError raised in a worker keeps its message.
    """

    def __init__(self, batches: StepBatches, workers: int = 0, pin_memory: bool = False, prefetch: int = 4):
        self.name = batches.name
        options = {"prefetch_factor": prefetch} if workers else {}
        self.loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=workers,
                                                  pin_memory=pin_memory, **options)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except RuntimeError as e:
                it = None  # the last reference: the other workers stop now, not when the traceback goes
                raise dead_worker(e, self.name) or e from None
            if isinstance(item, _Failed):
                it = None
                raise MopeError(item.message)
            yield item


class StepClock:
    """Splits each training step's seconds into waiting for its batch and computing it, and sums both."""

    def __init__(self):
        self.total = {"data_s": 0.0, "compute_s": 0.0}
        self._start = self._fetched = time.perf_counter()

    def wait(self, next_batch: Callable, *args):
        """next_batch(*args), timed as the step's data wait."""
        self._start = time.perf_counter()
        batch = next_batch(*args)
        self._fetched = time.perf_counter()
        return batch

    def split(self) -> dict[str, float]:
        """The step's {"data_s", "compute_s"} (compute: from its batch's arrival until now); added to the totals."""
        step = {"data_s": self._fetched - self._start, "compute_s": time.perf_counter() - self._fetched}
        self.total = {k: self.total[k] + v for k, v in step.items()}
        return step


def resolve_workers(requested: int | None) -> int:
    """The number of data workers: the request capped at the CPU cores this process may use (with a
    warning), or by default half of them (at most 8; none on a single core)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested is None:
        return min(8, cores // 2)
    if not isinstance(requested, int) or isinstance(requested, bool) or requested < 0:
        raise MopeError(f"--workers must be a whole number, 0 or more, not {requested!r}")
    if requested > cores:
        warnings.warn(f"--workers {requested} is more than the {cores} CPU cores this process may use; "
                      f"using {cores}", stacklevel=2)
        return cores
    return requested


@contextmanager
def seeded(*key: int):
    """Torch's global random draws (the training transform's crops) seeded by key, restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(np.random.SeedSequence([abs(k) for k in key]).generate_state(1)[0]))
        yield


class _ShapesBatch:
    def __init__(self, transform, batch_size, seed):
        self.transform, self.batch_size, self.seed = transform, batch_size, seed

    def __call__(self, step: int) -> tuple:
        batch = shapes.stream_batch(self.batch_size, self.seed, step)
        with seeded(self.seed, step, 1):
            images = torch.stack([self.transform(Image.fromarray(im.numpy())) for im in batch.images])
        return step, images, [c[0] for c in batch.captions]


class _PairsBatch:
    def __init__(self, rows, root, transform, batch_size, seed, rank, file):
        self.rows, self.root, self.transform, self.file = rows, root, transform, file
        self.batch_size, self.seed, self.rank = batch_size, seed, rank

    def __call__(self, step: int) -> tuple:
        rows, n = self.rows, len(self.rows)
        epoch, offset = divmod(step * self.batch_size, n)
        order = np.random.default_rng([self.seed, self.rank, epoch]).permutation(n)
        images, captions = [], []
        with seeded(self.seed, self.rank, step, 2):
            for i in range(offset, offset + n):  # each row at most once
                if len(images) == self.batch_size:
                    break
                image, caption = rows[order[i % n]]
                try:
                    images.append(self.transform(_open_rgb(_resolve(self.root, image))))
                    captions.append(caption)
                except (OSError, ValueError, Image.DecompressionBombError, MopeError):
                    continue  # an unreadable (or refused) image is skipped; the batch takes the next row
        if not images:
            raise MopeError(f"no image listed in {self.file} could be read (image root {self.root})")
        return step, torch.stack(images), captions


def shard_files(pattern: str) -> list[str]:
    """The shards a webdataset pattern matches, sorted. Each, symlinks resolved, must lie inside the folder the
    pattern starts from (its part before the first wildcard): a wildcard never leads through a symlink to
    files outside it (`/data/link_ou*/shard-*.tar` with /data/link_out → /elsewhere is refused)."""
    path = user_path(pattern).absolute()
    fixed = next((i for i, part in enumerate(path.parts) if glob.has_magic(part)), len(path.parts) - 1)
    root = Path(*path.parts[:fixed]).resolve()
    shards = sorted(glob.glob(str(path)))
    if not shards:
        raise MopeError(f"no .tar shards match {pattern}")
    outside = next((s for s in shards if not Path(s).resolve().is_relative_to(root)), None)
    if outside is not None:
        raise MopeError(f"the shard {outside} matched by {pattern} leads outside {root} (through a symlink); "
                        "give the pattern of the shards' own folder")
    return shards


class WebDatasetBatches(StepBatches):
    """Batch i holds samples i·B … (i+1)·B−1 of the endless sample sequence (shards in a seeded order per
    epoch). Each worker reads the tar bytes of every sample but decodes only its own batches'; a sample
    whose image does not decode is left out of its batch."""

    def __init__(self, pattern, transform, batch_size, seed, rank, world, start, stop, tokenizer, name):
        super().__init__(None, start, stop, tokenizer, name)
        shards = shard_files(pattern)
        self.shards, self.pattern = shards[rank::world] or shards, pattern
        self.transform, self.batch_size, self.seed, self.rank = transform, batch_size, seed, rank

    def _batches(self, first: int, every: int) -> Iterator[tuple]:
        step, images, captions = first, [], []
        for n, sample in enumerate(self._samples()):
            step_of = n // self.batch_size
            if step_of > step:
                yield self._finish(step, images, captions)
                step, images, captions = step + every, [], []
            if step_of == step:
                self._decode(sample, step, n, images, captions)

    def _finish(self, step, images, captions) -> tuple:
        if not images:
            raise MopeError(f"no image of batch {step} from {self.pattern} could be decoded")
        return step, torch.stack(images), captions

    def _decode(self, sample: dict, step: int, n: int, images: list, captions: list) -> None:
        try:
            with Image.open(io.BytesIO(next(sample[k] for k in IMAGE_KEYS if k in sample))) as im:
                image = im.convert("RGB")
            with seeded(self.seed, self.rank, step, n, 3):
                images.append(self.transform(image))
            captions.append(sample["txt"].decode("utf-8"))
        except (OSError, ValueError, UnicodeDecodeError, Image.DecompressionBombError):
            pass

    def _samples(self) -> Iterator[dict]:
        """Raw (undecoded) samples with an image and a caption, epoch after epoch."""
        import webdataset as wds

        for epoch in count():
            order = np.random.default_rng([self.seed, self.rank, epoch]).permutation(len(self.shards))
            dataset = wds.WebDataset([self.shards[i] for i in order], shardshuffle=False, empty_check=False,
                                     handler=wds.warn_and_continue, nodesplitter=None, workersplitter=None)
            got = False
            for sample in dataset:
                if "txt" in sample and any(k in sample for k in IMAGE_KEYS):
                    got = True
                    yield sample
            if not got:
                raise MopeError(f"the shards {self.pattern} hold no image–caption samples (keys jpg/png + txt)")
