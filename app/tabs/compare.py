"""Tab 4 · Compare: up to three models side by side, the accuracy-vs-compression study, predictions."""
from __future__ import annotations

import gradio as gr

from .. import figures
from ..choices import EVALUATION, PRESET_MODELS
from ..page import Lazy, Page

hc = Lazy("app.handlers.compare")
hj = Lazy("app.handlers.jobs")

TEACH = """Compare up to three models on held-out zero-shot data (never the calibration images), with size and
measured speed. The *study* prunes the original at 25 / 50 / 75% by MoPE, magnitude and random ranking, without
distillation: the higher a line stays, the better that ranking chose what to keep. Upload your own images and type
labels to see each model's top guesses."""

STUDY_VIEWS = ["study_status", "study_plot"]


def build(page: Page) -> None:
    with gr.Tab("4 · Compare", id="compare"):
        gr.Markdown(TEACH)
        with gr.Row():
            page.add(chosen=gr.Dropdown(PRESET_MODELS, value=["demo"], multiselect=True, max_choices=3,
                                        allow_custom_value=True, label="Models (up to three)", scale=4,
                                        elem_id="compare-models"),
                     evaluation=gr.Dropdown(list(EVALUATION), value=next(iter(EVALUATION)), label="Benchmark"),
                     eval_n=gr.Number(500, precision=0, minimum=10, maximum=10_000, label="Images"))
        page.add(run_compare=gr.Button("Compare", variant="primary", elem_id="run-compare"),
                 comparison=gr.Dataframe(label="Side by side", interactive=False, elem_id="comparison"))
        with gr.Row():
            page.add(run_study=gr.Button("Run study (accuracy vs compression)"), study_status=gr.Markdown())
        page.add(study_plot=gr.Plot(label="Accuracy vs compression", elem_id="study-plot"))
        gr.Markdown("### Your images")
        with gr.Row():
            page.add(images=gr.File(file_count="multiple", file_types=["image"], type="filepath", label="Images"))
            with gr.Column():
                page.add(labels=gr.Textbox(label="Labels, comma-separated", lines=2),
                         k=gr.Slider(1, 5, 3, step=1, label="Top k"))
                with gr.Row():
                    page.add(samples=gr.Button("Use sample images"),
                             predict=gr.Button("Predict", variant="primary", elem_id="predict"))
        page.add(gallery=gr.Gallery(label="Images", columns=6, height=180, elem_id="gallery"),
                 predicted=gr.Dataframe(label="Top-k per model", interactive=False, elem_id="predictions"),
                 compare_seen=gr.State(None))


def study_views(session: dict, state) -> dict:
    study, metric, line = hc.study_table(session, state)
    figure = figures.compression(study, metric) if study is not None else figures.empty("No study yet", height=340)
    return {"study_status": line, "study_plot": figure}


def wire(page: Page, loaded) -> None:
    state = page.state

    def draw_study(session):
        return study_views(page.session(session)[1], state)

    def compare(chosen, evaluation, eval_n, progress):
        return {"comparison": hc.compare(chosen, evaluation, eval_n, state, progress=progress)}

    def start_study(session):
        sid, before = page.session(session)
        after, message = hc.start_study(before, state)
        page.save(sid, after, before)
        gr.Info(message)
        return {"session": sid}

    def use_samples():
        paths, text = hc.sample_images(state)
        return {"images": paths, "labels": text, "gallery": paths}

    def predict(chosen, images, labels, k):
        table = hc.predictions(chosen, images, labels, k, state)
        return {"gallery": [(f, None) for f in images], "predicted": table}

    def tick(session, compare_seen):
        """Redraw the study when the session's scores changed or its study job moved."""
        _sid, sess = page.session(session)
        seen = (hj.signature(sess["study_job"], state), sess["scores"])
        return {"compare_seen": seen, **(study_views(sess, state) if seen != compare_seen else {})}

    private = {"api_visibility": "private"}
    page.on(loaded.then, draw_study, ["session"], STUDY_VIEWS, **private)
    page.on(page.run_compare.click, compare, ["chosen", "evaluation", "eval_n"], ["comparison"], api_name="compare",
            concurrency_id="heavy")
    studied = page.on(page.run_study.click, start_study, ["session"], ["session"], **private)
    page.on(studied.then, draw_study, ["session"], STUDY_VIEWS, **private)
    page.on(page.samples.click, use_samples, [], ["images", "labels", "gallery"], **private)
    page.on(page.predict.click, predict, ["chosen", "images", "labels", "k"], ["gallery", "predicted"],
            api_name="predict", concurrency_id="heavy")
    page.on(page.timer.tick, tick, ["session", "compare_seen"], ["compare_seen", *STUDY_VIEWS], quiet=True,
            show_progress="hidden", **private)
