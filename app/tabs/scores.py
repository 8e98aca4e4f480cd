"""Tab 2 · Scores: calibration data, a score job with heatmaps that fill in, baselines against MoPE."""
from __future__ import annotations

import gradio as gr

from .. import figures
from ..choices import BASELINES, CALIBRATION, CRITERIA
from ..page import Lazy, Page

hs = Lazy("app.handlers.scores")
hj = Lazy("app.handlers.jobs")

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
            n = gr.Number(256, precision=0, minimum=8, maximum=50_000, label="Images", elem_id="calibration-n")
            metric = gr.Dropdown([""], value="", allow_custom_value=False, label="Metric (empty: acc1 / recall_mean)")
            towers = gr.CheckboxGroup(["vision", "text"], value=["vision", "text"], label="Towers")
        with gr.Accordion("Your own calibration data", open=False):
            upload = gr.File(label=".zip of an image folder (one sub-folder per class)", file_types=[".zip"],
                             type="filepath")
            folder = gr.Textbox(label="Server folder (inside the allowed data folders)")
        with gr.Row():
            compute = gr.Button("Compute MoPE scores", variant="primary", elem_id="compute-scores")
            cancel_scores = gr.Button("Cancel scoring")
        score_status = gr.Markdown(elem_id="score-status")
        colour_by = gr.Radio(list(CRITERIA), value=CRITERIA[0], label="Colour by")
        heatmap = gr.Plot(label="Heatmaps", elem_id="heatmap")
        bars = gr.Plot(label="Per layer")
        with gr.Accordion("MoPE vs a baseline", open=False):
            baseline = gr.Radio(list(BASELINES), value=BASELINES[0], label="Baseline")
            scatter = gr.Plot(label="MoPE vs baseline")
            rho = gr.Dataframe(label="Spearman ρ between MoPE and each baseline", interactive=False)
        page.add(source=source, n=n, metric=metric, towers=towers, upload=upload, folder=folder, compute=compute,
                 cancel_scores=cancel_scores, score_status=score_status, colour_by=colour_by, heatmap=heatmap,
                 bars=bars, baseline=baseline, scatter=scatter, rho=rho, scores_seen=gr.State(None))


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
    def metrics_of(source):
        return {"metric": gr.update(choices=hs.metric_choices(source), value="")}

    for trigger in (loaded.then, page.source.change):
        page.on(trigger, metrics_of, ["source"], ["metric"], api_visibility="private")
    page.on(page.events["load_model"].then, draw_scores, **draw, api_name="draw_scores")
    started = page.on(page.compute.click, start_scores, ["session", "source", "upload", "folder", "metric", "n",
                                                         "towers"], ["session"], api_name="start_scores",
                      concurrency_id="heavy")
    page.on(started.then, draw_scores, **draw, api_visibility="private")
    page.on(page.cancel_scores.click, cancel_scores, ["session"], api_visibility="private")
    for control in (page.colour_by, page.baseline):
        page.on(control.change, draw_scores, **draw, api_visibility="private")
    page.on(page.timer.tick, tick, ["session", "scores_seen", "colour_by", "baseline"],
            ["session", "scores_seen", *VIEWS], quiet=True, show_progress="hidden", api_visibility="private")
