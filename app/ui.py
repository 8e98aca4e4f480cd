"""The page: four tabs (model, scores, prune & distill, compare) wired to app.handlers.

Per-person selections live in the browser (gr.BrowserState), jobs in the job store; a one-second
timer follows the running jobs and redraws only when a job moved. Nothing here imports torch: the
handlers (and with them torch and open_clip, ~6 s on 2 cores) load at the first event, after the page
is served.
"""
from __future__ import annotations

import functools
import logging

import gradio as gr
import pandas as pd

from . import figures
from .choices import CALIBRATION, DEVICES, EVALUATION, NEW_SESSION, PRESET_MODELS

log = logging.getLogger("app")

TEACH_MODEL = """**What you are looking at.** A CLIP has two towers: a *vision* transformer that embeds images and a
*text* transformer that embeds captions; zero-shot classification picks the label whose text embedding is closest to
the image's. Each layer has attention **heads** and an FFN (MLP) whose hidden **neurons** we prune in groups.
GFLOPs are counted per sample; latency is measured here, now, on this machine."""

TEACH_SCORES = """**MoPE** (Module-wise Pruning Error) of a unit = the zero-shot metric of the whole model minus the metric
with that unit removed, on the calibration data. High MoPE → the model needs it; near zero → prunable; negative → the
model does slightly *better* without it. **Reading the heatmaps:** one row per layer, one cell per head (left) or
neuron group (right); bright = important. Cells fill in as the job scores them. Hover for the unit's name, MoPE,
magnitude and rank. *Colour by* shows a baseline instead (weight magnitude, random, Taylor); the scatter below shows how
well a baseline agrees with MoPE (Spearman ρ: 1 = same ranking)."""

TEACH_PRUNE = """**Budget → plan.** The plan removes the lowest-scored units until each tower keeps the chosen fraction
of its head + FFN parameters (or FLOPs). *Uniform* removes the same number in every layer (the paper's layout, fast on
hardware); *global* removes the lowest scores anywhere. Red × marks what the plan removes; the table updates as you
move the sliders, without re-scoring. **Why width, then depth:** removing heads and neuron groups first and then
re-scoring whole layers on the narrower model ranks layers by what they contribute *after* width pruning, which is what
the final model will have. **Distillation** then trains the pruned student to imitate the original (teacher):
image–text similarities, embeddings and hidden states — it recovers most of the lost accuracy."""

TEACH_COMPARE = """Compare up to three models on held-out zero-shot data (never the calibration images), with size and
measured speed. The *study* prunes the original at 25 / 50 / 75% by MoPE, magnitude and random ranking, without
distillation: the higher a line stays, the better that ranking chose what to keep. Upload your own images and type
labels to see each model's top guesses."""


def guarded(fn):
    """Run a handler; a MopeError becomes a readable message, anything else a short one (traceback to the log)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:  # the page stays usable; details go to the server log
            if user_error(e):
                raise gr.Error(str(e), print_exception=False) from None
            log.exception("handler %s failed", fn.__name__)
            raise gr.Error(f"Something went wrong ({type(e).__name__}: {e}). The app keeps running; the server "
                           "log has the details.", print_exception=False) from None
    return wrapper


def user_error(e: Exception) -> bool:
    """A MopeError: something a person caused, whose message says what to do."""
    from mope.errors import MopeError

    return isinstance(e, MopeError)


class _Handlers:
    """Stands for app.handlers, imported at the first use (it brings torch and open_clip)."""

    def __getattr__(self, name):
        from . import handlers

        return getattr(handlers, name)


h = _Handlers()


def quiet(fn, unchanged: gr.components.Component):
    """For the timer: a failure is logged and the tick draws nothing (no message every second)."""
    @functools.wraps(fn)
    def wrapper(*args):
        try:
            return fn(*args)
        except Exception:
            log.exception("timer tick failed")
            return {unchanged: gr.skip()}
    return wrapper


def build(settings=None, model_dirs=(), data_dirs=()) -> gr.Blocks:
    """The page; `settings` (handlers.Settings) or the folders to make one from at the first event."""
    made = [settings]

    def S():
        if made[0] is None:
            made[0] = h.Settings(model_dirs=list(model_dirs), data_dirs=list(data_dirs))
        return made[0]

    with gr.Blocks(title="MoPE-CLIP Explorer") as demo:
        # --- layout: the four tabs ---------------------------------------------------------------------
        session = gr.BrowserState(dict(NEW_SESSION), storage_key="mope-clip-explorer")
        seen = gr.State({})  # what the timer last drew, per job
        gr.Markdown("# MoPE-CLIP Explorer\nSee which parts of a CLIP matter, prune it for real, distill it back, "
                    "and compare — in the browser.")
        with gr.Tabs():
            with gr.Tab("1 · Model", id="model"):
                gr.Markdown(TEACH_MODEL)
                with gr.Row():
                    spec = gr.Dropdown(PRESET_MODELS, value="demo", allow_custom_value=True, scale=4,
                                       elem_id="model-spec", label="Model: demo, NAME:TAG (e.g. ViT-B-32:openai), hf-hub:ORG/REPO, or a "
                                             "folder in the model folders")
                    load = gr.Button("Load", variant="primary", scale=1)
                headline = gr.Markdown(elem_id="model-headline")
                card = gr.Dataframe(label="Model card", interactive=False, elem_id="model-card")

            with gr.Tab("2 · Scores", id="scores"):
                gr.Markdown(TEACH_SCORES)
                with gr.Row():
                    source = gr.Dropdown(list(CALIBRATION), value=list(CALIBRATION)[0], label="Calibration data")
                    n = gr.Number(256, precision=0, minimum=8, maximum=50_000, label="Images", elem_id="calibration-n")
                    metric = gr.Dropdown([""], value="", allow_custom_value=False,
                                         label="Metric (empty: acc1 / recall_mean)")
                    towers = gr.CheckboxGroup(["vision", "text"], value=["vision", "text"], label="Towers")
                with gr.Accordion("Your own calibration data", open=False):
                    upload = gr.File(label=".zip of an image folder (one sub-folder per class)", file_types=[".zip"],
                                     type="filepath")
                    folder = gr.Textbox(label="Server folder (inside the allowed data folders)")
                with gr.Row():
                    compute = gr.Button("Compute MoPE scores", variant="primary", elem_id="compute-scores")
                    cancel_scores = gr.Button("Cancel scoring")
                score_status = gr.Markdown(elem_id="score-status")
                colour_by = gr.Radio(["mope", "magnitude", "random", "taylor"], value="mope", label="Colour by")
                heatmap = gr.Plot(label="Heatmaps", elem_id="heatmap")
                bars = gr.Plot(label="Per layer")
                with gr.Accordion("MoPE vs a baseline", open=False):
                    baseline = gr.Radio(["magnitude", "random", "taylor"], value="magnitude", label="Baseline")
                    scatter = gr.Plot(label="MoPE vs baseline")
                    rho = gr.Dataframe(label="Spearman ρ between MoPE and each baseline", interactive=False)

            with gr.Tab("3 · Prune & distill", id="prune"):
                gr.Markdown(TEACH_PRUNE)
                with gr.Row():
                    mode = gr.Radio(["keep fraction", "explicit counts"], value="keep fraction", label="Budget")
                    strategy = gr.Radio(["uniform", "global"], value="uniform", label="Strategy")
                    measure = gr.Radio(["params", "flops"], value="params", label="Keep fraction of")
                    by = gr.Dropdown(["mope", "magnitude", "random", "taylor"], value="mope", label="Rank by")
                with gr.Row():
                    keep_vision = gr.Slider(0.05, 1.0, 0.5, step=0.05, label="vision: keep", elem_id="keep-vision")
                    keep_text = gr.Slider(0.05, 1.0, 1.0, step=0.05, label="text: keep")
                    layers_vision = gr.Number(0, precision=0, minimum=0, label="vision: layers to remove")
                    layers_text = gr.Number(0, precision=0, minimum=0, label="text: layers to remove")
                with gr.Accordion("Explicit counts per layer (budget: explicit counts)", open=False):
                    with gr.Row():
                        heads_vision = gr.Number(0, precision=0, minimum=0, label="vision heads")
                        groups_vision = gr.Number(0, precision=0, minimum=0, label="vision neuron groups")
                        heads_text = gr.Number(0, precision=0, minimum=0, label="text heads")
                        groups_text = gr.Number(0, precision=0, minimum=0, label="text neuron groups")
                plan_table = gr.Dataframe(label="Before → after", interactive=False, elem_id="plan-table")
                plan_notes = gr.Markdown(elem_id="plan-notes")
                plan_heatmap = gr.Plot(label="What the plan removes", elem_id="plan-heatmap")
                with gr.Row():
                    device = gr.Dropdown(DEVICES,
                                         value="auto", label="Device")
                    steps = gr.Number(300, precision=0, minimum=1, label="Distillation steps", elem_id="pd-steps")
                    batch = gr.Number(64, precision=0, minimum=2, label="Batch size", elem_id="pd-batch")
                    data = gr.Textbox("shapes", label="Training pairs: shapes, pairs:FILE or wds:/dir/shard-*.tar")
                    name = gr.Textbox("pruned", label="Name")
                with gr.Row():
                    start = gr.Button("Prune & distill", variant="primary", elem_id="prune-distill")
                    cancel_pd = gr.Button("Cancel")
                    resume_pd = gr.Button("Resume from checkpoint")
                pd_status = gr.Markdown(elem_id="pd-status")
                loss_plot = gr.Plot(label="Distillation: losses and eval metrics", elem_id="loss-plot")
                evals = gr.Dataframe(label="Eval metrics during distillation", interactive=False)
                with gr.Accordion("Saved models and all jobs", open=False):
                    with gr.Row():
                        saved = gr.Dropdown([], label="Saved models", scale=4)
                        refresh = gr.Button("Refresh", scale=1)
                        zip_button = gr.Button("Zip for download", scale=1)
                    download = gr.File(label="Download", interactive=False)
                    jobs = gr.Dataframe(label="Jobs (newest first)", interactive=False)

            with gr.Tab("4 · Compare", id="compare"):
                gr.Markdown(TEACH_COMPARE)
                with gr.Row():
                    chosen = gr.Dropdown(PRESET_MODELS, value=["demo"], multiselect=True, max_choices=3,
                                         allow_custom_value=True, label="Models (up to three)", scale=4,
                                         elem_id="compare-models")
                    evaluation = gr.Dropdown(list(EVALUATION), value=list(EVALUATION)[0], label="Benchmark")
                    eval_n = gr.Number(500, precision=0, minimum=10, maximum=10_000, label="Images")
                run_compare = gr.Button("Compare", variant="primary", elem_id="run-compare")
                comparison = gr.Dataframe(label="Side by side", interactive=False, elem_id="comparison")
                with gr.Row():
                    run_study = gr.Button("Run study (accuracy vs compression)")
                    study_status = gr.Markdown()
                study_plot = gr.Plot(label="Accuracy vs compression", elem_id="study-plot")
                gr.Markdown("### Your images")
                with gr.Row():
                    images = gr.File(file_count="multiple", file_types=["image"], type="filepath", label="Images")
                    with gr.Column():
                        labels = gr.Textbox(label="Labels, comma-separated", lines=2)
                        k = gr.Slider(1, 5, 3, step=1, label="Top k")
                        with gr.Row():
                            samples = gr.Button("Use sample images")
                            predict = gr.Button("Predict", variant="primary", elem_id="predict")
                gallery = gr.Gallery(label="Images", columns=6, height=180, elem_id="gallery")
                predicted = gr.Dataframe(label="Top-k per model", interactive=False, elem_id="predictions")

        # --- what each part of the page shows, drawn from the session ----------------------------------
        budget_inputs = [mode, keep_vision, keep_text, strategy, measure, layers_vision, layers_text, heads_vision,
                         groups_vision, heads_text, groups_text]
        score_views = [score_status, heatmap, bars, scatter, rho]
        plan_views = [plan_table, plan_notes, plan_heatmap]
        pd_views = [pd_status, loss_plot, evals]

        def draw_scores(sess, colour, base):
            sess, df, total, line = h.scores_state(sess, S())
            if df is None:
                return sess, line, *(figures.empty("No scores yet") for _ in range(3)), None
            if total is not None:  # still scoring: MoPE only, no baselines yet
                return sess, line, figures.heatmaps(df, "mope"), figures.layer_bars(df), figures.empty("Scoring…"), None
            rho = h.correlations(df)
            colour = colour if colour in df.columns else "mope"
            return sess, line, figures.heatmaps(df, colour), figures.layer_bars(df), figures.versus(df, base, rho), rho

        def draw_plan(sess, by_column, *controls):
            sess = h.session_of(sess)
            df = h.scores_table(sess["scores"]) if sess["scores"] else None
            if df is None:
                return None, "Compute scores (tab 2) to plan a budget.", figures.empty("No scores yet")
            try:
                budget = h.budget_of(*controls)
                plan, table, notes = h.preview(df, budget, by_column)
            except Exception as e:
                if not user_error(e):
                    raise
                return None, f"**Cannot plan this budget:** {e}", figures.heatmaps(df, "mope")
            return table, notes, figures.heatmaps(df, "mope", removed={u.name for u in plan.removed})

        def draw_job(sess):
            line, curve, history, _ = h.job_state(h.session_of(sess)["pd_job"], S())
            return line, figures.losses(curve, history), pd.DataFrame(history).round(4) if history else None

        def draw_study(sess):
            study, metric, line = h.study_table(sess, S())
            return line, figures.compression(study, metric) if study is not None else figures.empty(
                "No study yet", height=340)

        # --- events ------------------------------------------------------------------------------------
        def restore(sess, src, colour, base, by_column, *controls):
            sess = h.session_of(sess)
            try:
                top, table = h.model_card(sess["spec"], S())
            except Exception as e:
                if not user_error(e):
                    raise
                failed, sess = sess["spec"], {**sess, "spec": "demo"}
                top, table = h.model_card("demo", S())
                top = f"**Could not load {failed}** ({e}); showing the demo model.\n\n" + top
            drawn = draw_scores(sess, colour, base)
            sess = drawn[0]
            saved_models = h.saved_models(S())
            models = h.model_choices(saved_models)
            return (sess, gr.update(choices=models, value=sess["spec"]), gr.update(choices=models), top, table,
                    gr.update(choices=h.metric_choices(src)), *drawn[1:], *draw_plan(sess, by_column, *controls),
                    *draw_job(sess), *draw_study(sess), h.jobs_table(S()), gr.update(choices=saved_models))

        def load_model(sess, value):
            """A model that fails to load is a message above the card of the model still in use."""
            sess = h.session_of(sess)
            try:
                top, table = h.model_card(value, S())
            except Exception as e:
                if not user_error(e):
                    raise
                gr.Warning(str(e))
                return sess, f"**Could not load `{value}`:** {e}\n\n{h.model_card(sess['spec'], S())[0]}", gr.skip()
            if value.strip() != sess["spec"]:  # scores belong to a model: a new model starts without them
                sess = {**sess, "spec": value.strip(), "scores": None, "score_job": None}
            return sess, top, table

        def start_scores(sess, src, up, fold, met, count, tw):
            sess, message = h.start_scores(sess, src, up, fold, met, count, tw, S())
            gr.Info(message)
            return sess

        def cancel_score_job(sess):
            gr.Info(h.cancel(h.session_of(sess)["score_job"], S()))

        def tick(sess, last, colour, base, by_column, *controls):
            """Redraw what a job changed since the last tick; components left out of the answer stay as they are."""
            sess = h.session_of(sess)
            signature = {key: _job_signature(sess[key], S()) for key in ("score_job", "pd_job", "study_job")}
            signature["scores"] = sess["scores"]
            if signature == last:
                return {seen: last}  # a dict keyed by components, so Gradio leaves the others alone
            out = {}
            if signature["score_job"] != last.get("score_job") or sess["scores"] != last.get("scores"):
                sess, *drawn = draw_scores(sess, colour, base)
                out.update(zip(score_views, drawn))
                if sess["scores"] != last.get("scores"):
                    out.update(zip(plan_views, draw_plan(sess, by_column, *controls)))
                    out.update(zip([study_status, study_plot], draw_study(sess)))
            if signature["pd_job"] != last.get("pd_job"):
                out.update(zip(pd_views, draw_job(sess)))
            if signature["study_job"] != last.get("study_job"):
                out.update(zip([study_status, study_plot], draw_study(sess)))
            signature["scores"] = sess["scores"]
            return {session: sess, seen: signature, **out}

        def start_pd(sess, by_column, dev, count, size, pairs, label, *controls):
            sess, message = h.start_prune_distill(sess, h.budget_of(*controls), by_column, dev, count, size, pairs,
                                                  label, S())
            gr.Info(message)
            return sess

        def cancel_pd_job(sess):
            gr.Info(h.cancel(h.session_of(sess)["pd_job"], S()))

        def resume_pd_job(sess):
            sess = h.session_of(sess)
            new, message = h.resume(sess["pd_job"], S())
            gr.Info(message)
            return {**sess, "pd_job": new}

        def refresh_lists():
            models = h.saved_models(S())
            return gr.update(choices=models, value=models[0] if models else None), gr.update(
                choices=h.model_choices(models)), h.jobs_table(S())

        def start_study(sess):
            sess, message = h.start_study(sess, S())
            gr.Info(message)
            return sess

        def run_comparison(models, bench, count, progress=gr.Progress()):
            return h.compare(models, bench, count, S(), progress=lambda f, d: progress(f, desc=d))

        def use_samples():
            paths, text = h.sample_images(S())
            return paths, text, paths

        def run_predictions(models, files, text, top):
            table = h.predictions(models, files, text, top, S())
            return [(f, None) for f in files], table

        # --- wiring: which event runs what; only the main ones are in the HTTP API -----------------------
        restore_inputs = [session, source, colour_by, baseline, by, *budget_inputs]
        restore_outputs = [session, spec, chosen, headline, card, metric, *score_views, *plan_views, *pd_views, study_status,
                           study_plot, jobs, saved]
        private = {"api_visibility": "private"}
        then_scores = dict(fn=guarded(draw_scores), inputs=[session, colour_by, baseline],
                           outputs=[session, *score_views], **private)
        then_plan = dict(fn=guarded(draw_plan), inputs=[session, by, *budget_inputs], outputs=plan_views,
                         show_progress="hidden", **private)
        demo.load(guarded(restore), restore_inputs, restore_outputs, **private)
        public = {"api_visibility": "public"}
        load.click(guarded(load_model), [session, spec], [session, headline, card], api_name="load_model",
                   concurrency_id="heavy").then(**{**then_scores, **public}, api_name="draw_scores").then(
            **{**then_plan, **public}, api_name="draw_plan")
        compute.click(guarded(start_scores), [session, source, upload, folder, metric, n, towers], session,
                      api_name="start_scores", concurrency_id="heavy").then(**then_scores).then(**then_plan)
        source.change(lambda s: gr.update(choices=h.metric_choices(s), value=""), source, metric, **private)
        cancel_scores.click(guarded(cancel_score_job), session, None, **private)
        for control in (colour_by, baseline):
            control.change(**then_scores)
        for control in [by, *budget_inputs]:  # a slider being dragged redraws with its latest value
            control.change(**then_plan, trigger_mode="always_last")
        start.click(guarded(start_pd), [session, by, device, steps, batch, data, name, *budget_inputs], session,
                    api_name="prune_and_distill").then(guarded(draw_job), session, pd_views, **private).then(
            lambda: h.jobs_table(S()), None, jobs, **private)
        cancel_pd.click(guarded(cancel_pd_job), session, None, **private)
        resume_pd.click(guarded(resume_pd_job), session, session, **private).then(guarded(draw_job), session,
                                                                                 pd_views, **private)
        refresh.click(guarded(refresh_lists), None, [saved, chosen, jobs], **private)
        zip_button.click(guarded(lambda folder_: h.model_zip(folder_, S())), saved, download, api_name="zip_model")
        run_compare.click(guarded(run_comparison), [chosen, evaluation, eval_n], comparison, api_name="compare",
                          concurrency_id="heavy")
        run_study.click(guarded(start_study), session, session, **private).then(
            guarded(draw_study), session, [study_status, study_plot], **private)
        samples.click(guarded(use_samples), None, [images, labels, gallery], **private)
        predict.click(guarded(run_predictions), [chosen, images, labels, k], [gallery, predicted],
                      api_name="predict", concurrency_id="heavy")
        timer = gr.Timer(1.0)
        timer_outputs = [session, seen, *score_views, *plan_views, *pd_views, study_status, study_plot]
        timer.tick(quiet(tick, seen), [session, seen, colour_by, baseline, by, *budget_inputs],
                   timer_outputs, show_progress="hidden", **private)
    return demo


def _job_signature(job_id: str | None, settings):
    """What changes when a job moves: status, step, points drawn."""
    if not job_id:
        return None
    job = h.job_or_none(settings.store(), job_id)
    if job is None:
        return (job_id, "gone")
    return (job_id, job["status"], job["progress"].get("step"), len(job["partial"]), len(job["curve"]),
            len(job["history"]))
