"""Tab 2 · Scores: calibration data, a score job with heatmaps that fill in, baselines against MoPE."""
from __future__ import annotations

import gradio as gr

from .. import figures
from ..choices import BASELINES, CALIBRATION, CONTROL_DEFAULTS, CRITERIA
from ..page import Page, user_error
from . import ha, hc, he, hj, hm, hs

TEACH = """**MoPE** (Module-wise Pruning Error) of a unit = the zero-shot metric of the whole model minus the metric
with that unit removed, on the calibration data. High MoPE → the model needs it; near zero → prunable; negative → the
model does slightly *better* without it. **Reading the heatmaps:** one row per layer, one cell per head (left) or
neuron group (right); bright = important. Cells fill in as the job scores them. Hover for the unit's name, MoPE,
magnitude and rank. *Colour by* shows a baseline instead (weight magnitude, random, Taylor); the scatter below shows how
well a baseline agrees with MoPE (Spearman ρ: 1 = same ranking)."""

VIEWS = ["score_status", "heatmap", "bars", "scatter", "rho"]


def build(page: Page) -> None:
    with gr.Tab("2 · Scores", id="scores"):
        gr.Markdown(TEACH)
        with gr.Row():
            source = gr.Dropdown(list(CALIBRATION), value=next(iter(CALIBRATION)), label="Calibration data")
            n = gr.Number(CONTROL_DEFAULTS["calibration_n"], precision=0, minimum=8, maximum=50_000, label="Images",
                          elem_id="calibration-n")
            metric = gr.Dropdown([""], value="", allow_custom_value=False, label="Metric (empty: acc1 / recall_mean)")
            towers = gr.CheckboxGroup(["vision", "text"], value=list(CONTROL_DEFAULTS["towers"]), label="Towers")
        with gr.Accordion("Your own calibration data", open=False):
            upload = gr.File(label=".zip of an image folder (one sub-folder per class)", file_types=[".zip"],
                             type="filepath")
            folder = gr.Textbox(label="Server folder (inside the allowed data folders)")
        with gr.Row():
            compute = gr.Button("Compute MoPE scores", variant="primary", elem_id="compute-scores")
            cancel_scores = gr.Button("Cancel scoring")
        score_status = gr.Markdown(elem_id="score-status")
        colour_by = gr.Radio(list(CRITERIA), value=CRITERIA[0], label="Colour by")
        page.add(source=source, n=n, metric=metric, towers=towers, upload=upload, folder=folder, compute=compute,
                 cancel_scores=cancel_scores, score_status=score_status, colour_by=colour_by,
                 heatmap=gr.Plot(label="Heatmaps", elem_id="heatmap"))
        with gr.Row():
            page.png_button("heatmap")
            page.add(scores_csv=gr.DownloadButton("Scores behind these figures (CSV)", size="sm", elem_id="scores-csv"))
        page.add(bars=gr.Plot(label="Per layer", elem_id="bars"))
        page.png_button("bars")
        with gr.Accordion("MoPE vs a baseline", open=False):
            page.add(baseline=gr.Radio(list(BASELINES), value=BASELINES[0], label="Baseline"),
                     scatter=gr.Plot(label="MoPE vs baseline", elem_id="scatter"))
            page.png_button("scatter")
            page.add(rho=gr.Dataframe(label="Spearman ρ between MoPE and each baseline", interactive=False))
        _attention(page)
        gr.Markdown(NEXT_STEP, elem_id="next-scores")
        page.add(scores_seen=gr.State(None))


NEXT_STEP = """**Next step:** in *3 · Prune & distill*, move the *keep* slider and watch which of these cells the
plan crosses out; low-scored heads and neuron groups go first. *Figure (PNG)* under each figure saves it as an image,
the CSV buttons save the data behind it."""

ATTENTION = """**What one head looks at.** Click a cell of a *heads* heatmap above (or type a head such as
`vision.L3.head1`). For a vision head: where the class token looks among the image's patches (bright = much
attention); for a text head: how the end-of-text token spreads its attention over the prompt's tokens. Beside it, the
same head in a pruned model (a head the pruning removed is shown as removed)."""


def _attention(page: Page) -> None:
    with gr.Accordion("Attention of one head (original vs pruned)", open=False, elem_id="attention-panel"):
        gr.Markdown(ATTENTION)
        with gr.Row():
            page.add(attn_head=gr.Textbox("vision.L0.head0", label="Head (click one on a heads heatmap)",
                                          elem_id="attn-head", scale=2),
                     attn_other=gr.Dropdown([], label="Pruned model beside it (saved models)", scale=3,
                                            elem_id="attn-other"),
                     attn_prompt=gr.Textbox("a photo of a red star", label="Prompt (text heads)", scale=2))
        with gr.Row():
            page.add(attn_image=gr.Image(type="filepath", sources=["upload"], label="Image (vision heads)", height=180,
                                         elem_id="attn-image", scale=1),
                     attn_plot=gr.Plot(label="Attention map", elem_id="attn-plot", scale=4))
        with gr.Row():
            page.add(attn_sample=gr.Button("Use a sample image", size="sm"),
                     attn_show=gr.Button("Show attention", variant="primary", size="sm", elem_id="attn-show"))
            page.png_button("attn_plot")
            page.add(attn_csv=gr.DownloadButton("Attention weights (CSV)", size="sm"))


def views(df, total, line: str, colour_by: str, baseline: str) -> dict:
    """What the tab shows of a scores table: final, still filling in (MoPE only), or none yet."""
    if df is None:
        return {"score_status": line, **{k: figures.empty("No scores yet") for k in VIEWS[1:4]}, "rho": None}
    if total is not None:
        return {"score_status": line, "heatmap": figures.heatmaps(df, "mope"), "bars": figures.layer_bars(df),
                "scatter": figures.empty("Scoring…"), "rho": None}
    rho = hs.correlations(df)
    colour = colour_by if colour_by in df.columns else "mope"
    return {"score_status": line, "heatmap": figures.heatmaps(df, colour), "bars": figures.layer_bars(df),
            "scatter": figures.versus(df, baseline, rho), "rho": rho}


def wire(page: Page, loaded) -> None:
    state = page.state

    def draw_scores(session, colour_by, baseline):
        sid, before = page.session(session)
        after, df, total, line = hs.scores_state(before, state)
        page.save(sid, after, before)
        return {"session": sid, **views(df, total, line, colour_by, baseline)}

    def start_scores(session, source, upload, folder, metric, n, towers):
        sid, before = page.session(session)
        after, message = hs.start_scores(before, source, upload, folder, metric, n, towers, state)
        page.save(sid, after, before)
        gr.Info(message)
        return {"session": sid}

    def cancel_scores(session):
        gr.Info(hj.cancel(page.session(session)[1]["score_job"], state))

    def tick(session, scores_seen, colour_by, baseline):
        """Redraw when the session's score job moved or its scores changed; otherwise leave the tab as it is."""
        sid, before = page.session(session)
        seen = (hj.signature(before["score_job"], state), before["scores"])
        if seen == scores_seen:
            return {"scores_seen": seen}
        return {**draw_scores(sid, colour_by, baseline), "scores_seen": seen}

    draw = {"inputs": ["session", "colour_by", "baseline"], "outputs": ["session", *VIEWS]}
    page.on(loaded.then, draw_scores, **draw, api_visibility="private")
    def metrics_of(source, metric):
        choices = hs.metric_choices(source)
        return {"metric": gr.update(choices=choices, value=metric if metric in choices else "")}

    def controls_of_scores(session, source):
        """The controls as the session's scores were computed (not the defaults beside other scores)."""
        kept = page.session(session)[1]["score_settings"]
        if not kept or kept.get("source") not in CALIBRATION:
            return {"metric": gr.update(choices=hs.metric_choices(source), value="")}
        return {"source": kept["source"], "n": kept["n"], "towers": kept["towers"],
                "metric": gr.update(choices=hs.metric_choices(kept["source"]), value=kept["metric"])}

    page.on(loaded.then, controls_of_scores, ["session", "source"], ["source", "n", "towers", "metric"],
            api_visibility="private")
    page.on(page.source.change, metrics_of, ["source", "metric"], ["metric"], api_visibility="private")
    page.on(page.events["load_model"].then, draw_scores, **draw, api_name="draw_scores")
    started = page.on(page.compute.click, start_scores, ["session", "source", "upload", "folder", "metric", "n",
                                                         "towers"], ["session"], api_name="start_scores",
                      concurrency_id="heavy")
    page.on(started.then, draw_scores, **draw, api_visibility="private")
    page.on(page.cancel_scores.click, cancel_scores, ["session"], api_visibility="private")
    for control in (page.colour_by, page.baseline):
        page.on(control.change, draw_scores, **draw, api_visibility="private")
    _wire_attention(page, loaded)
    page.download("scores_csv", lambda session: {"scores_csv": he.table_csv(
        hs.scores_or_none(page.session(session)[1], state), "scores", state)}, ["session"])
    page.on(page.timer.tick, tick, ["session", "scores_seen", "colour_by", "baseline"],
            ["session", "scores_seen", *VIEWS], quiet=True, show_progress="hidden", api_visibility="private")


def _wire_attention(page: Page, loaded) -> None:
    """The attention panel's events: draw one head's maps, fill the pruned-model list, a sample image."""
    state = page.state

    def draw_attention(session, attn_head, attn_other, attn_image, attn_prompt):
        """The head's maps; a head name being typed or a missing image is a note in the plot, not a popup."""
        spec = page.session(session)[1]["spec"]
        try:
            maps, image = ha.head_maps(spec, attn_other, attn_head, attn_image, attn_prompt, state)
        except Exception as e:
            if not user_error(e):
                raise
            return {"attn_plot": figures.empty(str(e), height=300), "attn_csv": None}
        return {"attn_plot": figures.attention_maps(maps, image),
                "attn_csv": he.table_csv(ha.attention_table(maps), "attention", state)}

    def pruned_choices():
        models = hm.saved_models(state)
        return {"attn_other": gr.update(choices=models, value=models[0] if models else None)}

    attention = {"inputs": ["session", "attn_head", "attn_other", "attn_image", "attn_prompt"],
                 "outputs": ["attn_plot", "attn_csv"]}
    page.on(loaded.then, pruned_choices, [], ["attn_other"], api_visibility="private")
    page.on(page.attn_show.click, draw_attention, **attention, api_name="attention", concurrency_id="heavy")
    for control in (page.attn_head, page.attn_other, page.attn_image):  # a click on the heatmap fills attn_head
        page.on(control.change, draw_attention, **attention, trigger_mode="always_last", api_visibility="private")
    page.on(page.attn_sample.click, lambda: {"attn_image": hc.sample_images(state)[0][0]}, [], ["attn_image"],
            api_visibility="private")
