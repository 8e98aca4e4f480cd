"""ONNX export: each tower as its own graph (images → embedding, tokens → embedding), dynamic batch.

The graphs come from torch's dynamo exporter (torch.export + onnxscript) at opset 23: it traces
`PrunedAttention` with any number of heads per layer like any other module, and at this opset it
writes attention as ONNX's fused `Attention` op, which onnxruntime runs as one kernel. (The older
TorchScript exporter also handles uneven heads, but torch has deprecated it and it writes attention as
two dozen small ops.) Every export is checked before it is kept: onnxruntime and torch embed the same
inputs at two batch sizes and the largest difference must stay within TOLERANCE. The folder is
written under a temporary name and renamed at the end, so a failed export leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .clip import Clip
from .errors import MopeError
from .io import atomic_folder, atomic_write_json
from .settings import user_path

FORMATS = ("onnx",)
OPSET = 23  # onnxruntime 1.32 runs it; the first opset with a fused Attention op
TOLERANCE = 1e-4  # largest |onnxruntime - torch| allowed on an fp32 embedding
INSTALL_HINT = "pip install -r requirements-export.txt"
INPUTS = {"vision": "image", "text": "tokens"}
OUTPUTS = {"vision": "image_embeds", "text": "text_embeds"}
FILES = {"vision": "image.onnx", "text": "text.onnx"}
_SINGLE_FILE_BYTES = 1_800_000_000  # protobuf caps a file at 2 GB: larger towers keep weights beside the graph
_CHECK_CAPTIONS = ("a photo of a small red circle in the top left corner", "a blue star", "")


class _Tower(nn.Module):
    """One tower of a CLIP as a module with one input and one output (the unnormalized embedding)."""

    def __init__(self, model: nn.Module, tower: str):
        super().__init__()
        self.model, self.tower = model, tower

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x) if self.tower == "vision" else self.model.encode_text(x)


def check_export(out: str | Path, format: str) -> Path:
    """What can be checked before a model loads: the format, the output folder, the optional packages."""
    if format not in FORMATS:
        raise MopeError(f"unknown export format '{format}'; use {', '.join(FORMATS)}")
    folder = check_out_folder(out)
    require_onnx()
    return folder


def check_out_folder(folder: str | Path) -> Path:
    """The output folder as a Path, refused when it exists or its parent cannot be written."""
    folder = user_path(folder).absolute()
    if folder.exists() or folder.is_symlink():
        raise MopeError(f"{folder} already exists: choose a new output folder (nothing was written)")
    parent = next((p for p in folder.parents if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise MopeError(f"cannot write in {parent or folder.parent}: choose an output folder you can write to")
    return folder


def require_onnx():
    """onnx, onnxscript and onnxruntime (an optional install), or a MopeError saying how to get them."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise MopeError(f"ONNX export needs onnx, onnxscript and onnxruntime ({e.name} is missing): "
                        f"{INSTALL_HINT}") from None
    return onnxruntime


def export(clip: Clip, out: str | Path, format: str = "onnx", opset: int | None = None,
           progress: Callable | None = None) -> dict:
    """Write both towers of `clip` as ONNX graphs into the new folder `out`; returns what export.json holds.

    opset defaults to OPSET.
    progress(done, total, eta, info) is called after each tower with info {"tower", "max_abs_diff"}.
    """
    folder = check_export(out, format)
    ort, opset = require_onnx(), opset or OPSET
    model = _cpu_fp32(clip.model)
    with atomic_folder(folder) as tmp:
        diffs, dims = {}, {}
        for done, tower in enumerate(("vision", "text"), 1):
            module = _Tower(model, tower).eval()
            _export_tower(module, tower, _check_inputs(clip, tower, 2), tmp / FILES[tower], opset)
            diffs[tower], dims[tower] = _max_abs_diff(ort, module, tmp / FILES[tower], tower, clip)
            if progress:
                progress(done, 2, None, {"tower": tower, "max_abs_diff": diffs[tower]})
        meta = _metadata(clip, model, opset, diffs, dims["vision"])
        atomic_write_json(tmp / "export.json", meta)
        _write_open_clip_config(clip, model, tmp)
    return json.loads((folder / "export.json").read_text())  # JSON's types (lists, not tuples)


def _cpu_fp32(model: nn.Module) -> nn.Module:
    """The model itself when it is an fp32 CPU model, else an fp32 CPU copy (the original stays put)."""
    p = next(model.parameters())
    if p.device.type == "cpu" and p.dtype == torch.float32:
        return model
    return copy.deepcopy(model).to("cpu", torch.float32)


def _check_inputs(clip: Clip, tower: str, batch: int) -> torch.Tensor:
    """Seeded images or tokenized captions, on the CPU."""
    if tower == "vision":
        size = clip.model.visual.image_size
        size = size if isinstance(size, (tuple, list)) else (size, size)
        return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(batch))
    captions = [_CHECK_CAPTIONS[i % len(_CHECK_CAPTIONS)] for i in range(batch)]
    return clip.tokenizer(captions).cpu()


def _export_tower(module: nn.Module, tower: str, example: torch.Tensor, path: Path, opset: int) -> None:
    big = sum(p.numel() * p.element_size() for p in module.parameters()) > _SINGLE_FILE_BYTES
    try:
        with contextlib.redirect_stdout(io.StringIO()), torch.inference_mode(False):
            torch.onnx.export(module, (example,), str(path), dynamo=True, opset_version=opset,
                              input_names=[INPUTS[tower]], output_names=[OUTPUTS[tower]],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=big)
    except Exception as e:  # the exporter raises many types; the first line says what failed
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise MopeError(f"the {tower} tower could not be exported to ONNX: {first}") from e


def _max_abs_diff(ort, module: nn.Module, path: Path, tower: str, clip: Clip) -> tuple[float, int]:
    """Largest |onnxruntime - torch| over inputs at batch 1 and 3 (a MopeError above TOLERANCE), and the
    embedding width."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's Fail / InvalidGraph: the graph is not usable
        raise MopeError(f"onnxruntime cannot load the exported {tower} tower: {str(e)[:300]}") from e
    worst = 0.0
    for batch in (1, 3):
        x = _check_inputs(clip, tower, batch)
        with torch.inference_mode():
            want = module(x).numpy()
        got = session.run(None, {INPUTS[tower]: x.numpy()})[0]
        if got.shape != want.shape:
            raise MopeError(f"the exported {tower} tower returns shape {got.shape}, torch {want.shape}: "
                            "the export is wrong (nothing was written)")
        worst = max(worst, float(np.abs(got - want).max()))
    if not worst <= TOLERANCE:
        raise MopeError(f"the exported {tower} tower differs from torch by {worst:.2e} (> {TOLERANCE:g}): "
                        "the export is wrong (nothing was written)")
    return worst, int(want.shape[1])


def _metadata(clip: Clip, model: nn.Module, opset: int, diffs: dict, dim: int) -> dict:
    import onnxruntime

    visual = model.visual
    size = visual.image_size
    return {
        "format": "onnx", "opset": opset, "source_spec": clip.spec, "name": clip.name,
        "files": {tower: FILES[tower] for tower in FILES},
        "inputs": {"vision": {"name": "image", "dtype": "float32", "shape": ["batch", 3, *(
                       size if isinstance(size, (tuple, list)) else (size, size))]},
                   "text": {"name": "tokens", "dtype": "int64", "shape": ["batch", int(model.context_length)]}},
        "outputs": {tower: {"name": OUTPUTS[tower], "dtype": "float32", "shape": ["batch", dim], "normalized": False}
                    for tower in OUTPUTS},
        "preprocess": dict(getattr(visual, "preprocess_cfg", {})),
        "logit_scale": float(model.logit_scale.detach().exp()),
        "max_abs_diff": diffs, "tolerance": TOLERANCE,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
    }


def _write_open_clip_config(clip: Clip, model: nn.Module, folder: Path) -> None:
    """open_clip_config.json beside the graphs, so open_clip.get_tokenizer('local-dir:FOLDER') tokenizes."""
    cfg = clip.info.get("model_cfg")
    if cfg is None:
        return
    atomic_write_json(folder / "open_clip_config.json",
                      {"model_cfg": cfg, "preprocess_cfg": dict(getattr(model.visual, "preprocess_cfg", {}))})
