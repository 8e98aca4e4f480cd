"""The pruned-model folder: open_clip_config.json + open_clip_model.safetensors + pruning.json + README.md.

pruning.json records what was kept (layers, heads, neurons per tower, in the source model's indices),
the source model spec and config, the plan and the scores' fingerprint. Where the pruned shape fits a
stock open_clip config (no head removed, one FFN width per tower), open_clip_config.json describes the
pruned model and the folder also loads with plain open_clip `local-dir:`; otherwise it holds the source
config and loading rebuilds the shapes from pruning.json before reading the weights. README.md is the
model card (mope.card).
"""
from __future__ import annotations

import copy
import json
import logging
import threading
from contextlib import contextmanager
from pathlib import Path

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from safetensors.torch import load_file

from .blocks import apply_structure
from .card import model_card
from .clip import Clip
from .errors import MopeError
from .io import atomic_folder, atomic_save_safetensors, atomic_write_json, atomic_write_text
from .settings import user_path
from .units import tower_blocks

FORMAT = 1
CARRIED = ("plan", "scores_fingerprint", "distill", "iterative")  # info keys kept in pruning.json


def stock_config(clip: Clip) -> dict | None:
    """An open_clip config describing the pruned model exactly, or None when none can."""
    cfg = copy.deepcopy(clip.info["model_cfg"])
    for tower, key in (("vision", "vision_cfg"), ("text", "text_cfg")):
        blocks = tower_blocks(clip.model, tower)
        width = blocks[0].attn.embed_dim
        if any(type(b.attn) is not torch.nn.MultiheadAttention for b in blocks):
            return None
        ffn = {b.mlp.c_fc.out_features for b in blocks}
        if len(ffn) != 1:
            return None
        ratio = ffn.pop() / width
        if int(width * ratio) != blocks[0].mlp.c_fc.out_features:
            return None
        cfg[key] = {**cfg[key], "layers": len(blocks), "mlp_ratio": ratio}
    return cfg


def save_pruned(clip: Clip, folder: str | Path, extra: dict | None = None) -> Path:
    """Write the pruned model to a new hub-ready folder, atomically (a temporary folder renamed at the end):
    open_clip_config.json, open_clip_model.safetensors, pruning.json and a README.md model card."""
    folder = user_path(folder)
    if folder.exists():
        raise MopeError(f"{folder} already exists: choose a new output folder (nothing was written)")
    if "structure" not in clip.info or "model_cfg" not in clip.info:
        raise MopeError("this model was not pruned by mope: nothing to save as a pruned model")
    with atomic_folder(folder) as tmp:
        stock = stock_config(clip)
        preprocess_cfg = dict(getattr(clip.model.visual, "preprocess_cfg", {}))
        atomic_write_json(tmp / "open_clip_config.json", {"model_cfg": stock or clip.info["model_cfg"],
                                                          "preprocess_cfg": preprocess_cfg})
        state = {k: v.detach().cpu().contiguous() for k, v in clip.model.state_dict().items()}
        atomic_save_safetensors(state, tmp / "open_clip_model.safetensors")
        atomic_write_json(tmp / "pruning.json", {
            "format": FORMAT, "stock": stock is not None, "source_spec": clip.info.get("source_spec", clip.spec),
            "source_config": clip.info["model_cfg"], "structure": clip.info["structure"],
            **{k: v for k, v in clip.info.items() if k in CARRIED},
            **(extra or {})})
        atomic_write_text(tmp / "README.md", model_card(clip, folder.name, stock is not None))
    return folder


class _OtherThreads(logging.Filter):
    """Lets through what other threads log, and errors; drops this thread's warnings and below."""

    def __init__(self):
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread or record.levelno >= logging.ERROR


@contextmanager
def _quiet_logging():
    """Silence the warnings open_clip logs on the root logger, in this thread only (a server's other threads
    keep logging: no process-wide logging.disable)."""
    only_others = _OtherThreads()
    logging.root.addFilter(only_others)
    try:
        yield
    finally:
        logging.root.removeFilter(only_others)


def load_pruned(folder: Path, spec: str, device: torch.device, name: str | None = None) -> Clip:
    """Rebuild a pruned model from its folder without the source weights."""
    try:
        meta = json.loads((folder / "pruning.json").read_text())
        source_cfg, structure = meta["source_config"], meta["structure"]
    except (json.JSONDecodeError, KeyError, OSError) as e:
        raise MopeError(f"{folder}/pruning.json is unreadable or incomplete ({e}); the folder is not a pruned model") from None
    try:
        if meta.get("stock"):
            model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}", device=device)
        else:
            with _quiet_logging():  # open_clip logs "initialized randomly": the weights come next
                model = open_clip.create_model(f"local-dir:{folder}", load_weights=False, device=device)
            apply_structure(model, structure, copy_weights=False)
            model.load_state_dict(load_file(folder / "open_clip_model.safetensors", device=str(device)), strict=True)
            preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    except MopeError:
        raise
    except Exception as e:
        raise MopeError(f"could not load the pruned model in {folder}: {str(e).splitlines()[0][:300]}") from e
    model.eval()
    info = {"model_cfg": source_cfg, "structure": structure, "source_spec": meta.get("source_spec"),
            **{k: meta[k] for k in CARRIED if k in meta}}
    return Clip(model, tokenizer, preprocess, name or folder.name, spec, device, info)


def provenance(clip: Clip) -> str:
    """Where a model comes from, in one line: original, pruned (by which plans) and distilled (how long)."""
    return describe_provenance(clip.info if "structure" in clip.info else None)


def folder_provenance(folder: str | Path) -> str:
    """provenance() of a saved model folder, read from its pruning.json without loading the weights."""
    meta_file = Path(folder) / "pruning.json"
    if not meta_file.is_file():
        return describe_provenance(None)
    try:
        return describe_provenance(json.loads(meta_file.read_text()))
    except (json.JSONDecodeError, OSError, KeyError, TypeError, AttributeError):
        return "unknown origin (pruning.json is unreadable)"


def describe_provenance(meta: dict | None) -> str:
    """The provenance line from a pruning.json record (or a pruned model's info); None: an original model."""
    if meta is None:
        return "original (not pruned)"
    parts = [f"pruned from {meta.get('source_spec') or 'an unknown model'}"]
    parts += [_plan_words(p) for p in meta.get("plan", [])]
    distilled = meta.get("distill")
    if distilled:
        planned = distilled.get("config", {}).get("steps")
        of = f" of {planned}" if planned and planned != distilled.get("steps_done") else ""
        parts.append(f"distilled {distilled.get('steps_done', 0)}{of} steps from {distilled.get('teacher', '?')}")
    else:
        parts.append("not distilled")
    return "; ".join(parts)


def _plan_words(plan: dict) -> str:
    budget = plan.get("budget", {})
    asked = [f"{k} {v}" for k in ("keep", "heads", "neurons", "layers") if (v := budget.get(k)) is not None]
    kinds = [name.split(".")[2].rstrip("0123456789") if name.count(".") == 2 else "layer" for name in plan["removed"]]
    counts = ", ".join(f"{kinds.count(k)} {w}" for k, w in (("head", "heads"), ("neurons", "neuron groups"),
                                                            ("layer", "layers")) if kinds.count(k))
    return (f"plan by {plan.get('by', 'mope')} ({', '.join(asked) or 'explicit'}, {budget.get('strategy', 'uniform')}, "
            f"{'/'.join(budget.get('towers', []))}): {counts or 'nothing'} removed")
