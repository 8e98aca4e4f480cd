"""Tab 1 · Model: a spec, its card (layers, heads, FFN width, params, GFLOPs, measured latency)."""
from __future__ import annotations

import gradio as gr

from ..choices import PRESET_MODELS
from ..page import Page, user_error
from . import hm

TEACH = """**What you are looking at.** A CLIP has two towers: a *vision* transformer that embeds images and a
*text* transformer that embeds captions; zero-shot classification picks the label whose text embedding is closest to
the image's. Each layer has attention **heads** and an FFN (MLP) whose hidden **neurons** we prune in groups.
GFLOPs are counted per sample; latency is measured here, now, on this machine."""


NEXT_STEP = """**Next step:** open *2 · Scores* and press **Compute MoPE scores** to see how much each head, neuron
group and layer of this model matters."""


def build(page: Page) -> None:
    with gr.Tab("1 · Model", id="model"):
        gr.Markdown(TEACH)
        with gr.Row():
            spec = gr.Dropdown(PRESET_MODELS, value="demo", allow_custom_value=True, scale=4, elem_id="model-spec",
                               label="Model: demo, NAME:TAG (e.g. ViT-B-32:openai), hf-hub:ORG/REPO, or a folder in "
                                     "the model folders")
            load = gr.Button("Load", variant="primary", scale=1)
        headline = gr.Markdown(elem_id="model-headline")
        card = gr.Dataframe(label="Model card", interactive=False, elem_id="model-card", wrap=True,
                            headers=["tower", "layers", "width", "heads / layer", "FFN width", "params (M)",
                                     "GFLOPs / sample", "latency, batch 1 (ms)", "throughput, batch 32 (/s)"])
        gr.Markdown(NEXT_STEP, elem_id="next-model")
    page.add(spec=spec, load=load, headline=headline, card=card)


def wire(page: Page, loaded) -> None:
    state = page.state

    def restore(session):
        """The card of the session's model (the demo, with a message, when it no longer loads)."""
        sid, before = page.session(session)
        after, top, table = hm.card_or_demo(before, state)
        page.save(sid, after, before)
        models = hm.model_choices(hm.saved_models(state))
        return {"session": sid, "spec": gr.update(choices=models, value=after["spec"]), "headline": top,
                "card": table}

    def load_model(session, spec):
        """A model that fails to load is a message above the card of the model still in use."""
        sid, before = page.session(session)
        try:
            after, top, table = hm.choose_model(before, spec, state)
        except Exception as e:
            if not user_error(e):
                raise
            gr.Warning(str(e))
            still = hm.model_card(before["spec"], state)[0]
            return {"session": sid, "headline": f"**Could not load `{str(spec)[:200]}`:** {e}\n\n{still}",
                    "card": gr.skip()}
        page.save(sid, after, before)
        return {"session": sid, "headline": top, "card": table}

    page.on(loaded.then, restore, ["session"], ["session", "spec", "headline", "card"], api_visibility="private")
    page.on(page.load.click, load_model, ["session", "spec"], ["session", "headline", "card"],
            api_name="load_model", concurrency_id="heavy")

