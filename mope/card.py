"""The model card (README.md) of a pruned-model folder: what was pruned, how big it is, how to load it.

Sizes before pruning come from the source architecture built on the meta device (shapes only, no
memory, no weights); sizes after from the pruned model itself, by the same counters (`units.tower_summary`
for parameters, `speed.gflops_per_sample` for FLOPs).
"""
from __future__ import annotations

import torch
from torch import nn

from .clip import Clip
from .units import KINDS, TOWERS, Unit, tower_blocks, tower_summary

_FRONT_MATTER = """---
library_name: open_clip
pipeline_tag: zero-shot-image-classification
tags:
- clip
- pruning
- mope-clip
---
"""


def tower_sizes(clip: Clip) -> dict[str, dict]:
    """Per tower: layers, heads and FFN width per layer, params and GFLOPs per sample."""
    from .speed import gflops_per_sample

    out = {}
    for tower in TOWERS:
        s = tower_summary(clip.model, tower)
        out[tower] = {"layers": s["layers"], "heads": s["heads"], "ffn": s["ffn"], "params": s["params"],
                      "gflops": gflops_per_sample(clip, tower)}
    return out


def source_sizes(clip: Clip) -> dict[str, dict] | None:
    """tower_sizes of the unpruned source architecture (built on the meta device), or None when open_clip
    cannot build it from the recorded config offline."""
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = dict(clip.info.get("model_cfg") or {})
    custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    try:
        with torch.device("meta"):
            model = (CustomTextCLIP if custom else CLIP)(**cfg)
        return tower_sizes(Clip(model, clip.tokenizer, None, clip.name, clip.spec, torch.device("meta")))
    except Exception:  # noqa: BLE001 — an architecture open_clip builds only with a download (HF text towers): sizes unknown
        return None


def model_card(clip: Clip, folder_name: str, stock: bool) -> str:
    """README.md for the folder `folder_name` holding the pruned `clip` (`stock`: loads with plain open_clip)."""
    source = clip.info.get("source_spec") or clip.spec
    distilled = " and distilled from it" if clip.info.get("distill") else ""
    sections = [
        _FRONT_MATTER,
        (f"# {folder_name}\n\nA structurally pruned CLIP: `{source}` with attention heads, FFN neurons or whole "
         "layers physically removed, ranked by their module-wise pruning error (MoPE-CLIP, "
         f"[arXiv 2403.07839](https://arxiv.org/abs/2403.07839)){distilled}. Made with MoPE-CLIP Explorer."),
        _size_section(clip),
        _plan_section(clip.info.get("plan", [])),
        _distill_section(clip.info.get("distill"), folder_name),
        _load_section(folder_name, None if stock else _why_not_stock(clip)),
    ]
    return "\n\n".join(s.strip("\n") for s in sections if s) + "\n"


def _size_section(clip: Clip) -> str:
    try:
        after = tower_sizes(clip)
    except Exception as e:  # noqa: BLE001 — the card never stops a model from being saved
        return f"## Size\n\nThe sizes could not be measured ({type(e).__name__}: {str(e)[:200]})."
    before = source_sizes(clip)
    rows = ["| tower | layers | heads per layer | FFN width per layer | params | GFLOPs per sample |",
            "|---|---|---|---|---|---|"]
    for tower in TOWERS:
        a, b = after[tower], (before or {}).get(tower)
        gflops = _arrow(b and f"{b['gflops']:.4g}", f"{a['gflops']:.4g}")
        rows.append(f"| {tower} | {_arrow(b and b['layers'], a['layers'])} | {_per_layer(a['heads'])} | "
                    f"{_per_layer(a['ffn'])} | {_arrow(b and _millions(b['params']), _millions(a['params']))} | "
                    f"{gflops} |")
    note = "" if before else "\n\nThe source architecture could not be built offline: sizes before pruning are not shown."
    return "## Size (before → after)\n\n" + "\n".join(rows) + note


def _arrow(before, after) -> str:
    return f"{after}" if before is None or before == after else f"{before} → {after}"


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _per_layer(values: list[int]) -> str:
    return "none" if not values else (f"{values[0]} (all)" if len(set(values)) == 1 else ", ".join(map(str, values)))


def _plan_section(plans: list[dict]) -> str:
    if not plans:
        return ""
    header = ("| step | ranked by | strategy | tower | heads removed | neuron groups removed | layers removed "
              "| transformer params | transformer GFLOPs |")
    lines = ["## Pruning plan", "", header, "|---" * 9 + "|"]
    for step, p in enumerate(plans, 1):
        for tower, s in p["sizes"].items():
            kinds = [u.kind for u in map(Unit.parse, p["removed"]) if u.tower == tower]
            counts = " | ".join(str(kinds.count(kind)) for kind in KINDS)
            lines.append(f"| {step} | {p.get('by', 'mope')} | {p['budget']['strategy']} | {tower} | {counts} | "
                         f"{_millions(s['params_before'])} → {_millions(s['params_after'])} | "
                         f"{s['flops_before'] / 1e9:.4g} → {s['flops_after'] / 1e9:.4g} |")
    return "\n".join(lines)


def _distill_section(distill: dict | None, folder_name: str) -> str:
    if not distill:
        return ("## Distillation and metrics\n\nNot distilled; no metrics were measured when it was saved. "
                f"Measure them with `python -m mope eval --model {folder_name} --data …`.")
    cfg = distill.get("config", {})
    settings = ", ".join(f"{k} {v}" for k, v in cfg.items())
    lines = ["## Distillation", "", (f"Distilled from `{distill.get('teacher')}` on `{distill.get('data')}` for "
                                     f"{distill.get('steps_done')} steps. Settings: {settings}.")]
    history = distill.get("history") or []
    if history:
        names = [k for k in history[-1] if k != "step"]
        lines += ["", "### Held-out evaluation during distillation", "",
                  "| step | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {h['step']} | " + " | ".join(_number(h.get(n)) for n in names) + " |" for h in history]
        lines += ["", "### Measured metrics (last evaluation)", "",
                  ", ".join(f"{n} {_number(history[-1][n])}" for n in names) + "."]
    return "\n".join(lines)


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _why_not_stock(clip: Clip) -> str:
    blocks = [b for tower in TOWERS for b in tower_blocks(clip.model, tower)]
    if any(type(b.attn) is not nn.MultiheadAttention for b in blocks):
        return "Heads were removed, and open_clip's attention (`nn.MultiheadAttention`) runs only all of its heads"
    return "The FFN width differs between layers, which no stock open_clip config can describe"


def _load_section(folder_name: str, not_stock: str | None) -> str:
    mope_load = (f"```python\nimport mope\n\nclip = mope.load_model(\"{folder_name}\")  # clip.model is an open_clip CLIP, "
                 "clip.tokenizer, clip.preprocess\n```")
    if not_stock is None:
        how = ("Every layer keeps all its heads and one FFN width per tower, so `open_clip_config.json` describes "
               "the pruned model and plain open_clip loads the folder (or the same files on the Hugging Face hub as "
               f"`hf-hub:ORG/REPO`):\n\n```python\nimport open_clip\n\nmodel, _, preprocess = "
               f"open_clip.create_model_and_transforms(\"local-dir:{folder_name}\")\n"
               f"tokenizer = open_clip.get_tokenizer(\"local-dir:{folder_name}\")\n```\n\nWith `mope` "
               "(`pip install -r requirements.txt` in MoPE-CLIP Explorer):\n\n" + mope_load)
    else:
        how = (f"{not_stock}: `open_clip_config.json` holds "
               "the source architecture and `pruning.json` the kept heads, neurons and layers. `mope` builds the "
               "source architecture, shrinks it to those shapes and loads the weights:\n\n" + mope_load)
    return ("## How to load\n\n" + how + "\n\nAs ONNX (both towers, dynamic batch): "
            f"`python -m mope export --model {folder_name} --format onnx --out {folder_name}-onnx`.")
