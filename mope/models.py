"""Loading a CLIP from a spec: the demo model, an open_clip tag, a checkpoint file, the hub, a folder."""
from __future__ import annotations

import difflib
import json
import os
import socket
from pathlib import Path

import open_clip
import torch

from .clip import Clip
from .errors import MopeError
from .settings import DEMO_DIR, default_device, user_path
from .specs import MODEL_HELP, ModelSpec


def load_model(spec: str | ModelSpec, device: str | torch.device | None = None) -> Clip:
    """Load the CLIP a spec names (see specs.MODEL_HELP) in eval mode on `device` (CUDA if present)."""
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)
    text, dev = spec.text, default_device(device)
    if spec.source == "demo":
        if not (DEMO_DIR / "open_clip_model.safetensors").is_file():
            raise MopeError(f"the demo model is missing from {DEMO_DIR}; reinstall, or train it with "
                            "'python -m mope train-demo'")
        return _load_local_dir(DEMO_DIR, text, dev, name="demo (shapes CLIP)")
    if spec.source == "folder":
        return _load_local_dir(spec.path, text, dev)
    if spec.source == "hub":
        _require_network(text)
        return _create(text, None, text, dev, name=text)
    name = spec.name
    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise MopeError(f"unknown model '{name}' in spec '{text}'.{hint} {MODEL_HELP}")
    if spec.source == "checkpoint":
        if not spec.path.is_file():
            raise MopeError(f"checkpoint file not found: {spec.path}. Check the path.")
        return _create(name, str(spec.path), text, dev, name=f"{name} ({spec.path.name})")
    if spec.tag is None:
        raise MopeError(f"'{text}' names no weights: add a pretrained tag or a checkpoint path, "
                        f"e.g. {name}:{(open_clip.list_pretrained_tags_by_model(name) or ['/path/ckpt.pt'])[0]}")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if spec.tag not in tags:
        raise MopeError(f"unknown pretrained tag '{spec.tag}' for {name}; known tags: {', '.join(tags) or 'none'}")
    _require_network(text)
    quick = bool(open_clip.get_pretrained_cfg(name, spec.tag).get("quick_gelu", False))
    return _create(name, spec.tag, text, dev, name=text, force_quick_gelu=quick)


def _require_network(spec: str) -> None:
    """Fail at once when the hub cannot be reached instead of waiting on retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise MopeError(f"'{spec}' must be downloaded, but HF_HUB_OFFLINE is set. Unset it on a machine with a "
                        "network, or download the checkpoint and load it as NAME:/path/to/file.")
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        raise MopeError(f"'{spec}' must be downloaded, but huggingface.co cannot be reached. Connect to the "
                        "network, or download the checkpoint elsewhere and load it as NAME:/path/to/file.") from None


def _load_local_dir(path: Path, spec: str, dev: torch.device, name: str | None = None) -> Clip:
    path = user_path(path)
    if not path.is_dir():
        raise MopeError(f"model folder not found: {path}")
    if not (path / "open_clip_config.json").is_file():
        raise MopeError(f"{path} is not a model folder: it has no open_clip_config.json "
                        "(an open_clip local-dir holds open_clip_config.json and open_clip_model.safetensors)")
    if not any((path / f).is_file() for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")):
        raise MopeError(f"{path} has a config but no weights (open_clip_model.safetensors)")
    if (path / "pruning.json").is_file():
        from .pruned import load_pruned

        return load_pruned(path, spec, dev, name)
    return _create(f"local-dir:{path}", None, spec, dev, name=name or path.name)


def _create(model_name: str, pretrained: str | None, spec: str, dev: torch.device, name: str, **kw) -> Clip:
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, device=dev, **kw)
        tokenizer = open_clip.get_tokenizer(model_name)
    except MopeError:
        raise
    except Exception as e:  # open_clip raises RuntimeError/ValueError/OSError/... for every failure
        raise MopeError(f"could not load '{spec}': {_first_line(e)}. {_hint(e)}") from e
    model.eval()
    info = {"model_cfg": source_config(model_name, kw.get("force_quick_gelu", False))}
    return Clip(model=model, tokenizer=tokenizer, preprocess=preprocess, name=name, spec=spec, device=dev, info=info)


def source_config(model_name: str, quick_gelu: bool = False) -> dict:
    """The open_clip model config a model was built from (to save pruned models beside it)."""
    if model_name.startswith("local-dir:"):
        return json.loads((Path(model_name[len("local-dir:"):]) / "open_clip_config.json").read_text())["model_cfg"]
    if model_name.startswith("hf-hub:"):
        from open_clip.factory import _get_hf_config

        return _get_hf_config(model_name[len("hf-hub:"):])["model_cfg"]
    cfg = open_clip.get_model_config(model_name)
    return {**cfg, "quick_gelu": True} if quick_gelu else cfg


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def _hint(e: Exception) -> str:
    text = str(e)
    if "size mismatch" in text or "Missing key" in text or "Unexpected key" in text:
        return "The checkpoint belongs to another architecture: pick the model name it was trained with."
    return "Check that the file is a complete CLIP checkpoint (safetensors or a torch state dict)."
