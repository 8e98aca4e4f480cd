"""Tab 1: loading a model (once, shared by every session) and its card."""
from __future__ import annotations

import pandas as pd

import mope
from mope import units as mope_units
from mope.pruned import provenance
from mope.settings import default_device
from mope.speed import gflops_per_sample, latency_seconds

from ..choices import PRESET_MODELS
from ..security import check_spec
from ..state import AppState


def get_model(spec: str, state: AppState) -> mope.Clip:
    """A loaded model, shared by every session; two sessions asking at once load it once."""
    spec = check_spec(spec, state)
    return state.models.get(spec, lambda: mope.load_model(spec, device=default_device()))


def model_card(spec: str, state: AppState) -> tuple[str, pd.DataFrame]:
    """(headline, per-tower table: layers, heads, FFN width, params, GFLOPs, measured latency)."""
    clip = get_model(spec, state)
    return state.cards.get(f"{clip.spec}@{clip.device}", lambda: _measure(clip))


def _measure(clip: mope.Clip) -> tuple[str, pd.DataFrame]:
    summary = mope_units.model_summary(clip.model)
    rows = []
    for tower in mope_units.TOWERS:
        s = summary[tower]
        rows.append({"tower": tower, "layers": s["layers"], "width": s["width"], "heads / layer": _compact(s["heads"]),
                     "FFN width": _compact(s["ffn"]), "params (M)": round(s["params"] / 1e6, 3),
                     "GFLOPs / sample": round(gflops_per_sample(clip, tower), 4),
                     "latency, batch 1 (ms)": round(latency_seconds(clip, tower, 1) * 1e3, 2),
                     "throughput, batch 32 (/s)": round(32 / latency_seconds(clip, tower, 32, repeats=3), 1)})
    headline = (f"**{clip.name}** · {summary['params'] / 1e6:.2f} M parameters in all · on {clip.device} · "
                f"image size {clip.model.visual.image_size}\n\nOrigin: {provenance(clip)}")
    return headline, pd.DataFrame(rows)


def _compact(values: list[int]) -> str:
    return str(values[0]) if len(set(values)) == 1 else ", ".join(map(str, values))


def card_or_demo(session: dict, state: AppState) -> tuple[dict, str, pd.DataFrame]:
    """(session, headline, card) of the session's model; the demo, with a message, when it fails to load."""
    try:
        return session, *model_card(session["spec"], state)
    except mope.MopeError as e:
        top, table = model_card("demo", state)
        return {**session, "spec": "demo"}, f"**Could not load {session['spec']}** ({e}); showing the demo model.\n\n" \
            + top, table


def choose_model(session: dict, spec: str, state: AppState) -> tuple[dict, str, pd.DataFrame]:
    """(session, headline, card) after loading `spec`; scores belong to a model, so a new one starts without."""
    top, table = model_card(spec, state)
    spec = spec.strip()
    if spec != session["spec"]:
        session = {**session, "spec": spec, "scores": None, "score_job": None}
    return session, top, table


def model_choices(saved: list[str]) -> list[str]:
    """The model list: the demo, the saved models (saved_models), then the preset hub models."""
    return [PRESET_MODELS[0], *saved, *PRESET_MODELS[1:]]


def saved_models(state: AppState) -> list[str]:
    """Pruned (and distilled) model folders under the models folder, newest first."""
    found = [p.parent for p in state.saved_dir.glob("**/pruning.json") if not p.parent.name.startswith(".")]
    return [str(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]
