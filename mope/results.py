"""Evaluation results in CLIP_benchmark's JSON layout, so `clip_benchmark build` tables read them.

CLIP_benchmark (LAION-AI/CLIP_benchmark, `clip_benchmark/cli.py`) writes one JSON object per run:
{"dataset", "model", "pretrained", "task", "metrics", "language"}; `build` flattens the metrics into the
row and joins `model + " " + pretrained` into `model_fullname`, so both must be strings. The metric names
are already CLIP_benchmark's (`acc1`, `acc5`, `mean_per_class_recall`, `image_retrieval_recall@k`, …).
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import MopeError
from .io import atomic_write_text
from .settings import user_path
from .specs import ModelSpec

EVAL_FORMATS = ("text", "clip_benchmark")  # what `eval --format` prints

TASKS = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval"}


def model_and_pretrained(spec: str) -> tuple[str, str]:
    """CLIP_benchmark's (model, pretrained) pair for a model spec: NAME:TAG → (NAME, TAG),
    NAME:/ckpt → (NAME, /ckpt); any other spec (demo, hf-hub:…, a folder) is the model, pretrained ''."""
    parsed = ModelSpec.parse(spec)
    if parsed.source == "pretrained":
        return parsed.name, parsed.tag or ""
    if parsed.source == "checkpoint":
        return parsed.name, str(parsed.path)
    return parsed.text, ""


def clip_benchmark_record(spec: str, dataset: str, protocol: str, metrics: dict[str, float],
                          language: str = "en") -> dict:
    """One CLIP_benchmark result: the model spec, the data spec, the task's protocol (zeroshot or retrieval) and its metrics."""
    model, pretrained = model_and_pretrained(spec)
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": TASKS[protocol],
            "metrics": {k: float(v) for k, v in metrics.items()}, "language": language}


def check_out_file(out: str | Path) -> Path:
    """The output file as a Path, refused when it exists (checked before evaluating, and again when writing)."""
    path = user_path(out)
    if path.exists() or path.is_symlink():
        raise MopeError(f"{path} already exists: choose a new --out file (nothing was written)")
    return path


def write_clip_benchmark(record: dict, out: str | Path) -> Path:
    """Write the record to a new file, atomically; an existing file is never overwritten."""
    path = check_out_file(out)
    try:
        atomic_write_text(path, json.dumps(record) + "\n")
    except OSError as e:
        raise MopeError(f"cannot write {path} ({e.strerror}): choose a file in a folder you can write to") from None
    return path
