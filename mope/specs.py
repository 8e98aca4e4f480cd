"""Typed model and data specs: the strings of `--model` / `--data` parsed once into records.

`ModelSpec.parse("ViT-B-32:laion2b_s34b_b79k")` and `DataSpec.parse("shapes:seed=3")` check the syntax
and say what the string names (a source and, where there is one, the local path to check against
allowed folders); loading (models.load_model, data.tasks.load_task, data.streams.pair_stream) takes a
string or a record and checks the rest (known model names, files that exist).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MopeError
from .settings import DEMO_DIR, user_path

MODEL_HELP = ("use 'demo', 'NAME:TAG' (e.g. ViT-B-32:laion2b_s34b_b79k), 'NAME:/path/ckpt.pt|.safetensors', "
              "'hf-hub:org/repo', or 'local-dir:/path' / a folder path")
TASK_HELP = "use shapes[:target=…,placement=grid|free,seed=…], folder:PATH, pairs:FILE, cifar10 or cifar100"
TRAINING_HELP = "use shapes, pairs:FILE or wds:/path/shard-*.tar"
SHAPES_OPTIONS = ("target", "placement", "seed", "n")
SHAPES_USAGE = "shapes:target=colour_shape|shape|colour,placement=grid|free,seed=N,n=N"


def looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or text.endswith((".pt", ".pth", ".bin", ".safetensors"))


@dataclass(frozen=True)
class ModelSpec:
    """What a model spec names. source: demo | hub | folder | checkpoint | pretrained.

    name: the open_clip model name (checkpoint, pretrained); tag: the pretrained tag (None when the
    spec names none); path: the folder or checkpoint file; hub: the hf-hub repo.
    """

    text: str
    source: str
    name: str | None = None
    tag: str | None = None
    path: Path | None = None
    hub: str | None = None

    @classmethod
    def parse(cls, spec: str) -> ModelSpec:
        text = (spec or "").strip()
        if not text:
            raise MopeError(f"empty model spec; {MODEL_HELP}")
        if text == "demo":
            return cls(text, "demo", path=DEMO_DIR)
        if text.startswith("local-dir:"):
            return cls(text, "folder", path=user_path(text[len("local-dir:"):]))
        if text.startswith("hf-hub:"):
            return cls(text, "hub", hub=text[len("hf-hub:"):])
        if user_path(text).is_dir() or (":" not in text and looks_like_path(text)):
            return cls(text, "folder", path=user_path(text))
        name, _, source = text.partition(":")
        if source and looks_like_path(source):
            return cls(text, "checkpoint", name=name, path=user_path(source))
        return cls(text, "pretrained", name=name, tag=source or None)

    @property
    def local_path(self) -> Path | None:
        """The file or folder read from this machine (None for the demo, a tag or the hub)."""
        return self.path if self.source in ("folder", "checkpoint") else None


@dataclass(frozen=True)
class DataSpec:
    """What a data spec names. source: shapes | folder | pairs | cifar10 | cifar100 | wds.

    path: the folder, the pairs file or the shard pattern; options: shapes' target / placement / seed / n.
    """

    text: str
    source: str
    path: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> DataSpec:
        text = (spec or "").strip()
        head, _, rest = text.partition(":")
        if head == "shapes":
            return cls(text, "shapes", options=_shapes_options(rest))
        if head in ("folder", "pairs", "wds") and rest:
            return cls(text, head, path=rest)
        if text in ("cifar10", "cifar100"):
            return cls(text, text)
        raise MopeError(f"unknown data spec '{text}'; {TASK_HELP}, or for training {TRAINING_HELP}")

    @property
    def local_path(self) -> Path | None:
        """The file or folder read from this machine: a shard pattern's folder; None for generated or
        downloaded data."""
        if self.source == "wds":
            return user_path(self.path).parent
        return user_path(self.path) if self.path else None

    def for_task(self) -> DataSpec:
        """This spec, if it names an evaluation / calibration task."""
        if self.source == "wds":
            raise MopeError(f"'{self.text}' is training data (webdataset shards), not a task; {TASK_HELP}")
        return self

    def for_training(self) -> DataSpec:
        """This spec, if it names training pairs."""
        if self.source not in ("shapes", "pairs", "wds"):
            raise MopeError(f"unknown training data '{self.text}'; {TRAINING_HELP}")
        return self


def _shapes_options(rest: str) -> dict[str, str]:
    parts = [kv for kv in rest.split(",") if kv]
    options = dict(kv.split("=", 1) for kv in parts if "=" in kv)
    unknown = set(options) - set(SHAPES_OPTIONS) | {kv for kv in parts if "=" not in kv}
    if unknown:
        raise MopeError(f"unknown shapes option(s) {sorted(unknown)}; use {SHAPES_USAGE}")
    for key in ("seed", "n"):
        if key in options and not options[key].strip().lstrip("-").isdigit():
            raise MopeError(f"shapes {key} must be an integer, not '{options[key]}'; use {SHAPES_USAGE}")
    return options
