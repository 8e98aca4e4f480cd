"""The app's page. Until the full app lands: load a model and show its summary."""
from __future__ import annotations

import gradio as gr
import pandas as pd

import mope
from mope.units import model_summary


def summary_table(spec: str) -> tuple[pd.DataFrame, str]:
    """(per-tower table, status line) for a model spec; errors become the status line."""
    try:
        clip = mope.load_model(spec, device="cpu")
    except mope.MopeError as e:
        return pd.DataFrame(), f"**Could not load the model:** {e}"
    s = model_summary(clip.model)
    rows = [{"tower": t, "layers": s[t]["layers"], "width": s[t]["width"],
             "heads per layer": _compact(s[t]["heads"]), "FFN width": _compact(s[t]["ffn"]),
             "params (M)": round(s[t]["params"] / 1e6, 3)} for t in mope.units.TOWERS]
    return pd.DataFrame(rows), f"**{clip.name}** — {s['params'] / 1e6:.2f} M parameters"


def _compact(values: list[int]) -> str:
    return str(values[0]) if len(set(values)) == 1 else ", ".join(map(str, values))


def build() -> gr.Blocks:
    with gr.Blocks(title="MoPE-CLIP Explorer") as demo:
        gr.Markdown("# MoPE-CLIP Explorer\nStructured pruning of CLIP models with the Module-wise Pruning Error.")
        with gr.Row():
            spec = gr.Textbox(value="demo", label="Model spec", scale=4)
            load = gr.Button("Load", scale=1)
        status = gr.Markdown()
        table = gr.Dataframe(label="Model summary", interactive=False)
        load.click(summary_table, spec, [table, status])
        demo.load(summary_table, spec, [table, status])
    return demo
