"""Tab 4 · Compare: up to three models side by side, the accuracy-vs-compression study, predictions."""
from __future__ import annotations

import gradio as gr

from .. import figures
from ..choices import CONTROL_DEFAULTS, EVALUATION, PRESET_MODELS
from ..page import Page, user_error
from . import hc, he, hj

TEACH = """Compare up to three models on held-out zero-shot data (never the calibration images), with size and
measured speed. The *study* prunes the original at 25 / 50 / 75% by MoPE, magnitude and random ranking, without
distillation: the higher a line stays, the better that ranking chose what to keep. Upload your own images and type
labels to see each model's top guesses."""

STUDY_VIEWS = ["study_status", "study_plot"]


NEXT_STEP = """**Next step:** prune by another ranking or budget in *3 · Prune & distill* and compare again, or draw
a shape in the sketchpad to see where the pruned model's answer changes. *Figure (PNG)* under each figure saves it as
an image, the CSV buttons save the data behind it."""


def build(page: Page) -> None:
    with gr.Tab("4 · Compare", id="compare"):
        gr.Markdown(TEACH)
        with gr.Row():
            page.add(chosen=gr.Dropdown(PRESET_MODELS, value=["demo"], multiselect=True, max_choices=3,
                                        allow_custom_value=True, label="Models (up to three)", scale=4,
                                        elem_id="compare-models"),
                     evaluation=gr.Dropdown(list(EVALUATION), value=next(iter(EVALUATION)), label="Benchmark"),
                     eval_n=gr.Number(CONTROL_DEFAULTS["eval_n"], precision=0, minimum=10, maximum=10_000, label="Images",
                                      elem_id="compare-n"))
        page.add(origins=gr.Markdown(elem_id="compare-origins"),
                 run_compare=gr.Button("Compare", variant="primary", elem_id="run-compare"),
                 comparison=gr.Dataframe(label="Side by side (each model's origin: above; in the CSV)",
                                         interactive=False, wrap=True, elem_id="comparison",
                                         headers=["model", "params (M)", "acc1", "image latency (ms)"]),
                 latency_note=gr.Markdown(elem_id="latency-note"),
                 per_class_plot=gr.Plot(label="Per-class accuracy", elem_id="per-class-plot"))
        with gr.Row():
            page.png_button("per_class_plot")
            page.add(per_class_csv=gr.DownloadButton("Per-class accuracy (CSV)", size="sm", elem_id="per-class-csv"),
                     comparison_csv=gr.DownloadButton("Side-by-side table (CSV)", size="sm"))
        with gr.Row():
            page.add(run_study=gr.Button("Run study (accuracy vs compression)"),
                     study_iterative=gr.Checkbox(False, label="with iterative MoPE ×4 (re-scored as it prunes; slower)",
                                                 elem_id="study-iterative"),
                     study_status=gr.Markdown())
        page.add(study_plot=gr.Plot(label="Accuracy vs compression", elem_id="study-plot"))
        with gr.Row():
            page.png_button("study_plot")
            page.add(study_csv=gr.DownloadButton("Study data (CSV)", size="sm"))
        _your_images(page)
        gr.Markdown(NEXT_STEP, elem_id="next-compare")


def _your_images(page: Page) -> None:
    gr.Markdown("### Your images\n" + figures.FORCED_CHOICE)
    with gr.Row():
        page.add(images=gr.File(file_count="multiple", file_types=["image"], type="filepath", label="Images"))
        with gr.Column():
            page.add(labels=gr.Textbox(label="Labels, comma-separated", lines=2, elem_id="labels"),
                     k=gr.Slider(1, 5, 3, step=1, label="Top k"))
            with gr.Row():
                page.add(samples=gr.Button("Add sample images"),
                         predict=gr.Button("Predict", variant="primary", elem_id="predict"))
    page.add(gallery=gr.Gallery(label="Images", columns=6, height=200, object_fit="contain", elem_id="gallery"),
             predicted=gr.Dataframe(label="Top-k per model", interactive=False, wrap=True, elem_id="predictions",
                                    headers=["image", "model", "note"]),
             prob_bars=gr.Plot(label="Every label's probability, per model", elem_id="probability-bars"),
             compare_seen=gr.State(None))
    with gr.Row():
        page.png_button("prob_bars")
        page.add(predicted_csv=gr.DownloadButton("Probabilities (CSV)", size="sm"))
    gr.Markdown("### Draw a shape\nPick the brush (left of the canvas) and draw with the mouse; every stroke re-asks "
                "each chosen model to pick among the labels above (the original and the pruned model side by side).")
    with gr.Row():
        page.add(sketch=gr.Sketchpad(label="Sketchpad", type="numpy", height=340, elem_id="sketchpad",
                                     canvas_size=(256, 256), fixed_canvas=True, layers=False,
                                     placeholder="Pick the brush (left), then draw a shape",
                                     brush=gr.Brush(default_size=12, colors=["#d62728", "#1f77b4", "#2ca02c", "#000000"])),
                 sketch_bars=gr.Plot(label="What each model sees in your drawing", elem_id="sketch-bars"))
    with gr.Row():
        page.png_button("sketch_bars")
        page.add(sketch_csv=gr.DownloadButton("Drawing's probabilities (CSV)", size="sm"))


def study_views(session: dict, state) -> dict:
    study, metric, line = hc.study_table(session, state)
    figure = figures.compression(study, metric) if study is not None else figures.empty("No study yet", height=340)
    return {"study_status": line, "study_plot": figure}


def wire(page: Page, loaded) -> None:
    state = page.state

    def draw_study(session):
        return study_views(page.session(session)[1], state)

    def compare(chosen, evaluation, eval_n, progress):
        got = hc.compare(chosen, evaluation, eval_n, state, progress=progress)
        plot = figures.per_class(got.per_class, got.models) if got.per_class is not None else \
            figures.empty("Per-class accuracy needs a classification benchmark", height=200)
        shown = got.table.drop(columns="origin")  # a long line, listed above the table: it pushed the numbers off
        return {"comparison": shown, "latency_note": got.latency_note, "per_class_plot": plot,
                "per_class_csv": he.table_csv(got.per_class, "per-class-accuracy", state) if got.per_class is not None
                else None, "comparison_csv": he.table_csv(got.table, "comparison", state)}

    def start_study(session, study_iterative):
        sid, before = page.session(session)
        after, message = hc.start_study(before, state, iterative=study_iterative)
        page.save(sid, after, before)
        gr.Info(message)
        return {"session": sid}

    def add_samples(images, labels):
        paths, text, message = hc.add_samples(images, labels, state)
        gr.Info(message)
        return {"images": paths, "labels": text, "gallery": paths}

    def predict(chosen, images, labels, k):
        got = hc.predictions(chosen, images, labels, k, state)
        return {"gallery": [(f, None if i not in got.errors else "not an image") for i, f in enumerate(images)],
                "predicted": got.table, "prob_bars": figures.probability_bars(got.names, got.labels, got.probs, got.errors),
                "predicted_csv": he.table_csv(got.long_table(), "probabilities", state)}

    def sketch(chosen, sketch, labels):
        if hc.sketch_image(sketch) is None:
            return {"sketch_bars": figures.empty("Draw something", height=240)}
        try:
            got = hc.sketch_predictions(chosen, sketch, labels, state)
        except Exception as e:  # every stroke asks again: a note in the plot, not one more toast per stroke
            if not user_error(e):
                raise
            return {"sketch_bars": figures.empty(str(e), height=240), "sketch_csv": None}
        return {"sketch_bars": figures.probability_bars(got.names, got.labels, got.probs),
                "sketch_csv": he.table_csv(got.long_table(), "drawing-probabilities", state)}

    def study_csv(session):
        study, _metric, _line = hc.study_table(page.session(session)[1], state)
        return {"study_csv": he.table_csv(study, "study", state)}

    def tick(session, compare_seen):
        """Redraw the study when the session's scores changed or its study job moved."""
        _sid, sess = page.session(session)
        seen = (hj.signature(sess["study_job"], state), sess["scores"])
        return {"compare_seen": seen, **(study_views(sess, state) if seen != compare_seen else {})}

    private = {"api_visibility": "private"}
    page.on(loaded.then, draw_study, ["session"], STUDY_VIEWS, **private)
    page.on(page.chosen.change, lambda chosen: {"origins": hc.origins(chosen, state)}, ["chosen"], ["origins"],
            **private)
    page.on(loaded.then, lambda chosen: {"origins": hc.origins(chosen, state)}, ["chosen"], ["origins"], **private)
    page.on(page.run_compare.click, compare, ["chosen", "evaluation", "eval_n"],
            ["comparison", "latency_note", "per_class_plot", "per_class_csv", "comparison_csv"], api_name="compare",
            concurrency_id="heavy")
    studied = page.on(page.run_study.click, start_study, ["session", "study_iterative"], ["session"], **private)
    page.on(studied.then, draw_study, ["session"], STUDY_VIEWS, **private)
    page.download("study_csv", study_csv, ["session"])
    page.on(page.samples.click, add_samples, ["images", "labels"], ["images", "labels", "gallery"], **private)
    page.on(page.predict.click, predict, ["chosen", "images", "labels", "k"],
            ["gallery", "predicted", "prob_bars", "predicted_csv"], api_name="predict", concurrency_id="heavy")
    page.on(page.sketch.change, sketch, ["chosen", "sketch", "labels"], ["sketch_bars", "sketch_csv"],
            trigger_mode="always_last",
            show_progress="hidden", api_name="sketch")
    page.remember(["chosen", "evaluation", "eval_n", "labels", "k"], loaded)
    page.on(page.timer.tick, tick, ["session", "compare_seen"], ["compare_seen", *STUDY_VIEWS], quiet=True,
            show_progress="hidden", **private)
