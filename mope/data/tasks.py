"""Tasks: a set of images with either class labels (zero-shot classification) or captions (retrieval).

A data spec names where a task comes from: `shapes[:KEY=VALUE,...]`, `folder:PATH`, `pairs:FILE`,
`cifar10`, `cifar100`.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import MopeError
from ..rules import arguments
from ..settings import data_dir, user_path
from ..specs import DataSpec
from . import shapes

MAX_PIXELS = 40_000_000  # larger images are refused from their header, before decoding (decompression bombs)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GENERIC_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a close-up photo of a {}.",
                     "a bright photo of a {}.", "a low resolution photo of a {}.")
SHAPES_TEMPLATES = {
    "colour_shape": ("a {}", "a photo of a {}", "an image of a {}", "a picture of a {}", "a drawing of a {}"),
    "shape": ("a {}", "a photo of a {}", "an image of a {}", "a picture of a {}"),
    "colour": ("a {} shape", "a photo of a {} shape", "an image of a {} shape", "a picture of a {} shape"),
}
SHAPES_HELD_OUT_SEED = 1000  # the demo model trains on a stream whose seeds are derived, never this one


PROTOCOLS = ("zeroshot", "retrieval")  # how a task scores a model: zero-shot classification or retrieval


@dataclass
class Task:
    """Images (uint8 array or file paths) and either classes + labels or captions + their images."""

    name: str
    protocol: str  # "zeroshot" or "retrieval"
    images: torch.Tensor | list[Path]
    classnames: list[str] = field(default_factory=list)
    templates: Sequence[str] = ()
    labels: torch.Tensor | None = None
    texts: list[str] = field(default_factory=list)
    text_to_image: torch.Tensor | None = None
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.images)

    def pil_image(self, i: int) -> Image.Image:
        if isinstance(self.images, torch.Tensor):
            return Image.fromarray(self.images[i].numpy())
        return _open_rgb(self.images[i])

    def fingerprint(self) -> str:
        """Hash of everything that determines the task's numbers."""
        h = hashlib.sha256()
        h.update(json.dumps([self.protocol, self.classnames, list(self.templates), self.texts]).encode())
        if isinstance(self.images, torch.Tensor):
            h.update(self.images.numpy().tobytes())
        else:
            for p in self.images:
                st = os.stat(p)
                h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
        for t in (self.labels, self.text_to_image):
            if t is not None:
                h.update(t.numpy().tobytes())
        return h.hexdigest()[:16]

    def drawn(self, n: int) -> torch.Tensor:
        """The positions of subset(n)'s images, in task order: the first n of one fixed shuffle (seed 0), so a
        larger subset holds every image of a smaller one."""
        return torch.randperm(len(self), generator=torch.Generator().manual_seed(0))[:n].sort().values

    def subset(self, n: int | None) -> "Task":
        """n images drawn evenly at random (seed 0, task order kept), with their labels or captions."""
        if n is None or n >= len(self):
            return self
        return self.at(self.drawn(n), f"{self.name}[{n}]")

    def at(self, index: torch.Tensor, name: str | None = None) -> "Task":
        """The images at `index` (distinct task positions, kept in that order), with their labels or captions."""
        index = torch.as_tensor(index, dtype=torch.long)
        images = self.images[index] if isinstance(self.images, torch.Tensor) else [self.images[i] for i in index]
        sub = Task(name or f"{self.name}[{len(index)} at]", self.protocol, images, classnames=self.classnames,
                   templates=self.templates, skipped=self.skipped)
        if self.protocol == "zeroshot":
            sub.labels = self.labels[index]
            return sub
        new_id = torch.full((len(self),), -1, dtype=torch.long)
        new_id[index] = torch.arange(len(index))
        keep = new_id[self.text_to_image] >= 0
        sub.texts = [t for t, k in zip(self.texts, keep.tolist()) if k]
        sub.text_to_image = new_id[self.text_to_image][keep]
        return sub


def image_batches(task: Task, preprocess, batch_size: int = 64) -> Iterator[torch.Tensor]:
    """Preprocessed image batches in task order."""
    for start in range(0, len(task), batch_size):
        stop = min(start + batch_size, len(task))
        yield torch.stack([preprocess(task.pil_image(i)) for i in range(start, stop)])


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        check_pixels(im, Path(path).name)
        return im.convert("RGB")


def check_pixels(im: Image.Image, name: str) -> None:
    """Refuse an opened (not yet decoded) image over MAX_PIXELS: its header gives the size."""
    if im.width * im.height > MAX_PIXELS:
        raise MopeError(f"{name} is {im.width}×{im.height} pixels, over the {MAX_PIXELS // 10**6} megapixel "
                        "limit; resize it first")


# --- builders ---------------------------------------------------------------------------------------

def shapes_task(target: str = "colour_shape", n: int = 1000, seed: int = SHAPES_HELD_OUT_SEED,
                protocol: str = "zeroshot", placement: str = "grid") -> Task:
    """A shapes-world task: classify by colour×shape (64-way), shape or colour; or retrieval.

    placement "grid" (5 positions, 3 sizes) or "free" (anywhere, any size, slightly rotated).
    """
    shapes.check_placement(placement)
    where = "" if placement == "grid" else f",placement={placement}"
    if protocol == "retrieval":
        batch = shapes.sample(n, seed=seed, captions_per_image=5, detail="full", placement=placement)
        texts = [c for caps in batch.captions for c in caps]
        owner = torch.arange(n).repeat_interleave(5)
        return Task(f"shapes-retrieval(n={n},seed={seed}{where})", "retrieval", batch.images, texts=texts,
                    text_to_image=owner)
    if target not in SHAPES_TEMPLATES:
        raise MopeError(f"unknown shapes target '{target}'; use one of {', '.join(SHAPES_TEMPLATES)}")
    batch = shapes.sample(n, seed=seed, captions_per_image=1, placement=placement)
    if target == "colour_shape":
        classnames = [f"{c} {s}" for c in shapes.COLOURS for s in shapes.SHAPES]
        labels = batch.labels["colour"] * len(shapes.SHAPES) + batch.labels["shape"]
    else:
        classnames = shapes.attribute_names(target)
        labels = batch.labels[target]
    return Task(f"shapes-{target}(n={n},seed={seed}{where})", "zeroshot", batch.images, classnames=classnames,
                templates=SHAPES_TEMPLATES[target], labels=labels)


def folder_task(root: str | Path, templates: Sequence[str] = GENERIC_TEMPLATES) -> Task:
    """Zero-shot classification from root/CLASS/*.jpg; class names from folder names."""
    root = user_path(root)
    if not root.is_dir():
        raise MopeError(f"image folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise MopeError(f"{root} has no class sub-folders: put each class's images in root/CLASS_NAME/")
    paths, labels = [], []
    for label, cls in enumerate(classes):
        for p in sorted((root / cls).rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(p)
                labels.append(label)
    good, skipped = _readable(paths)
    if not good:
        raise MopeError(f"{root} has no readable images ({skipped} unreadable); supported: {', '.join(IMAGE_EXTENSIONS)}")
    return Task(f"folder:{root}", "zeroshot", [paths[i] for i in good],
                classnames=[c.replace("_", " ") for c in classes], templates=templates,
                labels=torch.tensor([labels[i] for i in good]), skipped=skipped)


def pairs_task(file: str | Path, image_root: str | Path | None = None) -> Task:
    """Retrieval from a CSV (columns image,caption) or JSONL ({"image":…, "caption":…}) file.

    Rows naming the same image give that image several captions. Relative image paths are resolved
    against image_root (default: the file's folder).
    """
    rows = read_pairs(file)
    root = user_path(image_root) if image_root else user_path(file).parent
    order: dict[Path, int] = {}
    for image, _ in rows:
        order.setdefault(_resolve(root, image), len(order))
    paths = list(order)
    good, skipped = _readable(paths)
    if not good:
        raise MopeError(f"none of the {len(paths)} images listed in {file} could be read (image root {root})")
    new_index = {paths[i]: j for j, i in enumerate(good)}
    kept = [(new_index[_resolve(root, im)], cap) for im, cap in rows if _resolve(root, im) in new_index]
    return Task(f"pairs:{file}", "retrieval", [paths[i] for i in good], texts=[c for _, c in kept],
                text_to_image=torch.tensor([i for i, _ in kept]), skipped=skipped)


def read_pairs(file: str | Path) -> list[tuple[str, str]]:
    """(image, caption) rows of a CSV or JSONL file; a clear error for missing columns or no rows."""
    file = user_path(file)
    if not file.is_file():
        raise MopeError(f"pairs file not found: {file}")
    rows: list[tuple[str, str]] = []
    if file.suffix.lower() in (".jsonl", ".json"):
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                rows.append((str(obj["image"]), str(obj["caption"])))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise MopeError(f"{file} line {n}: expected a JSON object with 'image' and 'caption'") from None
    else:
        with open(file, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
                raise MopeError(f"{file} needs a header row with columns 'image' and 'caption' "
                                f"(found: {', '.join(reader.fieldnames or []) or 'none'})")
            rows = [(r["image"], r["caption"]) for r in reader if r["image"] and r["caption"]]
    if not rows:
        raise MopeError(f"{file} has no image,caption rows")
    return rows


def _resolve(root: Path, image: str) -> Path:
    p = user_path(image)
    return p if p.is_absolute() else root / p


def _readable(paths: Sequence[Path]) -> tuple[list[int], int]:
    """Indices of images that decode; unreadable, corrupt or oversized files are skipped and counted."""
    good = []
    for i, p in enumerate(paths):
        try:
            _open_rgb(p)
            good.append(i)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError, MopeError):
            pass
    return good, len(paths) - len(good)


def cifar_task(name: str, root: str | Path | None = None, templates: Sequence[str] = GENERIC_TEMPLATES) -> Task:
    """CIFAR-10/100 test set via torchvision (downloaded once where a network exists)."""
    from torchvision import datasets

    root = Path(root) if root else data_dir()
    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    try:
        ds = cls(str(root), train=False, download=False)
    except RuntimeError:
        try:
            ds = cls(str(root), train=False, download=True)
        except Exception as e:
            raise MopeError(f"{name} is not in {root} and could not be downloaded ({type(e).__name__}). Connect to "
                            f"the network once, or place the extracted dataset under {root}.") from None
    return Task(name, "zeroshot", torch.from_numpy(np.asarray(ds.data)), classnames=[c.replace("_", " ") for c in ds.classes],
                templates=templates, labels=torch.tensor(ds.targets))


def load_task(spec: str | DataSpec, protocol: str | None = None, n: int | None = None, seed: int | None = None,
              image_root: str | None = None) -> Task:
    """Build the task a data spec names (see specs.TASK_HELP), on a seeded sample of its images.

    protocol: zeroshot (classification) or retrieval, checked against what the data is (shapes can be
    either). n: how many images — the shapes world draws n images from `seed`; any other data keeps a random
    sample of n of its images drawn with a fixed seed (Task.subset, seed 0: the same n images every time, in
    the data's order, not the first n), or all of them when n is None. seed: the shapes world's seed (default:
    the held-out seed).
    """
    spec = (spec if isinstance(spec, DataSpec) else DataSpec.parse(spec)).for_task()
    arguments("mope.load_task", n=n, seed=seed)
    if spec.source == "shapes":
        options = spec.options
        return shapes_task(target=options.get("target", "colour_shape"), n=n or int(options.get("n", 1000)),
                           seed=seed if seed is not None else int(options.get("seed", SHAPES_HELD_OUT_SEED)),
                           protocol=protocol or "zeroshot", placement=options.get("placement", "grid"))
    if spec.source == "folder":
        task = folder_task(spec.path)
    elif spec.source == "pairs":
        task = pairs_task(spec.path, image_root)
    else:
        task = cifar_task(spec.source)
    if protocol and protocol != task.protocol:
        raise MopeError(f"'{spec.text}' is a {task.protocol} task, not {protocol}")
    return task.subset(n)
