"""Endless streams of (image, caption) batches for distillation: the shapes world, a pairs file,
or webdataset .tar shards. Batch i is a function of (seed, rank, i), so a resumed run sees the same data.
"""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from ..errors import MopeError
from ..specs import DataSpec
from . import shapes
from .tasks import _open_rgb, _resolve, read_pairs

Batch = tuple[int, torch.Tensor, list[str]]


def pair_stream(spec: str | DataSpec, transform: Callable, batch_size: int, seed: int = 0, start: int = 0,
                rank: int = 0, world: int = 1, image_root: str | None = None) -> Iterator[Batch]:
    """(step, transformed images, captions) from `shapes`, `pairs:FILE` or `wds:PATTERN` (.tar shards)."""
    spec = training_spec(spec)
    if spec.source == "shapes":
        return _shapes(transform, batch_size, seed * 1000 + rank, start)
    if spec.source == "pairs":
        return _pairs(spec.path, image_root, transform, batch_size, seed, start, rank, world)
    return _webdataset(spec.path, transform, batch_size, seed, start, rank, world)


def training_spec(spec: str | DataSpec) -> DataSpec:
    """The spec of training pairs (shapes, pairs:FILE, wds:PATTERN); a clear error for anything else.
    Its local_path is what to check against allowed folders."""
    return (spec if isinstance(spec, DataSpec) else DataSpec.parse(spec)).for_training()


def _shapes(transform, batch_size, seed, start) -> Iterator[Batch]:
    for step, batch in shapes.stream(batch_size, seed=seed, start=start):
        images = torch.stack([transform(Image.fromarray(im.numpy())) for im in batch.images])
        yield step, images, [c[0] for c in batch.captions]


def _pairs(file, image_root, transform, batch_size, seed, start, rank, world) -> Iterator[Batch]:
    rows = read_pairs(file)[rank::world]
    root = Path(image_root).expanduser() if image_root else Path(file).expanduser().parent
    if not rows:
        raise MopeError(f"{file} has no rows for process {rank} of {world}")
    step = start
    while True:
        epoch, offset = divmod(step * batch_size, len(rows))
        order = np.random.default_rng([seed, rank, epoch]).permutation(len(rows))
        images, captions, tries = [], [], 0
        i = offset
        while len(images) < batch_size:
            if tries > len(rows):
                raise MopeError(f"no image listed in {file} could be read (image root {root})")
            image, caption = rows[order[i % len(rows)]]
            i, tries = i + 1, tries + 1
            try:
                images.append(transform(_open_rgb(_resolve(root, image))))
                captions.append(caption)
            except (OSError, ValueError, Image.DecompressionBombError, MopeError):
                continue  # an unreadable image is skipped; the batch takes the next row
        yield step, torch.stack(images), captions
        step += 1


def _webdataset(pattern, transform, batch_size, seed, start, rank, world) -> Iterator[Batch]:
    import webdataset as wds

    shards = sorted(glob.glob(str(Path(pattern).expanduser())))
    if not shards:
        raise MopeError(f"no .tar shards match {pattern}")
    mine = shards[rank::world] or shards

    def samples():
        epoch = 0
        while True:
            order = np.random.default_rng([seed, rank, epoch]).permutation(len(mine))
            dataset = (wds.WebDataset([mine[i] for i in order], shardshuffle=False, empty_check=False,
                                      handler=wds.warn_and_continue)
                       .decode("pil", handler=wds.warn_and_continue)
                       .to_tuple("jpg;jpeg;png;webp", "txt", handler=wds.warn_and_continue))
            got = False
            for image, caption in dataset:
                got = True
                yield transform(image.convert("RGB")), caption
            if not got:
                raise MopeError(f"the shards {pattern} hold no image–caption samples (keys jpg/png + txt)")
            epoch += 1

    it = samples()
    for _ in range(start * batch_size):  # resume: the same samples in the same order, skipped
        next(it)
    step = start
    while True:
        pairs = [next(it) for _ in range(batch_size)]
        yield step, torch.stack([p[0] for p in pairs]), [p[1] for p in pairs]
        step += 1
