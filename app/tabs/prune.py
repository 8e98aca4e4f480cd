"""Tab 3 · Prune & distill: a budget, its plan preview on the heatmap, prune-and-distill jobs, saved models."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from .. import figures
from ..choices import CONTROL_DEFAULTS, CRITERIA, DEVICES, STEP_SCHEDULES
from ..page import Page, user_error
from . import hc, he, hj, hm, hp, hs

TEACH = """**Budget → plan.** The plan removes the lowest-scored units until each tower keeps the chosen fraction
of its head + FFN parameters (or FLOPs). *Uniform* removes the same number in every layer (the paper's layout, fast on
hardware); *global* removes the lowest scores anywhere. Red × marks what the plan removes; the table updates as you
move the sliders, without re-scoring. **Why width, then depth:** removing heads and neuron groups first and then
re-scoring whole layers on the narrower model ranks layers by what they contribute *after* width pruning, which is what
the final model will have. **Distillation** then trains the pruned student to imitate the original (teacher):
image–text similarities, embeddings and hidden states — it recovers most of the lost accuracy."""

# the budget controls, in the order of handlers.prune.budget_of's parameters
BUDGET = ["mode", "keep_vision", "keep_text", "strategy", "measure", "layers_vision", "layers_text", "heads_vision",
          "groups_vision", "heads_text", "groups_text"]
PLAN_VIEWS = ["plan_table", "plan_notes", "plan_heatmap"]
JOB_VIEWS = ["pd_status", "loss_plot", "evals", "jobs"]


NEXT_STEP = """**Next step:** when the job has saved its model, open *4 · Compare*, pick the original and the
saved model, and press **Compare**: accuracy, size and speed side by side. *Figure (PNG)* under each figure saves it
as an image, the CSV buttons save the data behind it."""


def build(page: Page) -> None:
    with gr.Tab("3 · Prune & distill", id="prune"):
        gr.Markdown(TEACH)
        _budget(page)
        page.add(plan_table=gr.Dataframe(label="Before → after", interactive=False, elem_id="plan-table", wrap=True,
                                         headers=["tower", "heads removed", "neuron groups removed", "layers removed",
                                                  "params before", "params after", "GFLOPs before", "GFLOPs after"]),
                 plan_notes=gr.Markdown(elem_id="plan-notes"),
                 plan_heatmap=gr.Plot(label="What the plan removes", elem_id="plan-heatmap"))
        with gr.Row():
            page.png_button("plan_heatmap")
            page.add(plan_csv=gr.DownloadButton("Plan table (CSV)", size="sm", elem_id="plan-csv"),
                     stability=gr.Button("Plan stability (bootstrap)", size="sm", elem_id="plan-stability-button"))
        page.add(stability_line=gr.Markdown(elem_id="plan-stability"))
        with gr.Row():
            page.add(iterative=gr.Number(CONTROL_DEFAULTS["iterative"], precision=0, minimum=1, maximum=16, elem_id="pd-iterative",
                                         label="Iterative steps (1 = one-shot; K re-scores the pruned model K − 1 times)"),
                     step_schedule=gr.Radio(list(STEP_SCHEDULES), value=CONTROL_DEFAULTS["step_schedule"],
                                            label="Step schedule"))
        with gr.Row():
            page.add(device=gr.Dropdown(DEVICES, value="auto", label="Device"),
                     steps=gr.Number(CONTROL_DEFAULTS["distill_steps"], precision=0, minimum=1, label="Distillation steps",
                                     elem_id="pd-steps"),
                     batch=gr.Number(CONTROL_DEFAULTS["batch_size"], precision=0, minimum=2, label="Batch size", elem_id="pd-batch"),
                     data=gr.Textbox(CONTROL_DEFAULTS["data"], label="Training pairs: shapes, pairs:FILE or wds:/dir/shard-*.tar"),
                     name=gr.Textbox("pruned", label="Name"))
        with gr.Row():
            page.add(start=gr.Button("Prune & distill", variant="primary", elem_id="prune-distill"),
                     cancel_pd=gr.Button("Cancel"), resume_pd=gr.Button("Resume from checkpoint"))
        page.add(pd_status=gr.Markdown(elem_id="pd-status"),
                 loss_plot=gr.Plot(label="Distillation: losses and eval metrics", elem_id="loss-plot"),
                 evals=gr.Dataframe(label="Eval metrics during distillation (step 0: before training)",
                                    interactive=False, headers=["step", "acc1", "acc5", "mean_per_class_recall"]))
        with gr.Row():
            page.png_button("loss_plot")
            page.add(evals_csv=gr.DownloadButton("Distillation curve and evals (CSV)", size="sm"))
        with gr.Accordion("Saved models and all jobs", open=False):
            with gr.Row():
                page.add(saved=gr.Dropdown([], label="Saved models", scale=4), refresh=gr.Button("Refresh", scale=1),
                         zip_button=gr.Button("Zip for download", scale=1),
                         export_button=gr.Button("Export to ONNX", scale=1, elem_id="export-onnx"))
            page.add(saved_origin=gr.Markdown(elem_id="saved-origin"),
                     export_status=gr.Markdown(elem_id="export-status"),
                     download=gr.File(label="Download", interactive=False))
            with gr.Accordion("Model card (README.md of the saved folder)", open=False):
                page.add(saved_card=gr.Markdown(elem_id="saved-card"))
            page.add(jobs=gr.Dataframe(label="Jobs (newest first)", interactive=False, wrap=True,
                                       headers=["job", "kind", "status", "progress", "model", "started",
                                                "result / error"]))
        gr.Markdown(NEXT_STEP, elem_id="next-prune")
        page.add(prune_seen=gr.State(None))  # inside the Tab: a State directly under Tabs shifts the tab labels


def _budget(page: Page) -> None:
    with gr.Row():
        page.add(mode=gr.Radio(["keep fraction", "explicit counts"], value="keep fraction", label="Budget"),
                 strategy=gr.Radio(["uniform", "global"], value=CONTROL_DEFAULTS["strategy"], label="Strategy"),
                 measure=gr.Radio(["params", "flops"], value=CONTROL_DEFAULTS["measure"], label="Keep fraction of"),
                 by=gr.Dropdown(list(CRITERIA), value=CONTROL_DEFAULTS["by"], label="Rank by"))
    with gr.Row():
        page.add(keep_vision=gr.Slider(0.05, 1.0, CONTROL_DEFAULTS["keep"], step=0.05, label="vision: keep", elem_id="keep-vision"),
                 keep_text=gr.Slider(0.05, 1.0, 1.0, step=0.05, label="text: keep"),
                 layers_vision=gr.Number(0, precision=0, minimum=0, label="vision: layers to remove"),
                 layers_text=gr.Number(0, precision=0, minimum=0, label="text: layers to remove"))
    with gr.Accordion("Explicit counts per layer (budget: explicit counts)", open=False), gr.Row():
        page.add(heads_vision=gr.Number(0, precision=0, minimum=0, label="vision heads"),
                 groups_vision=gr.Number(0, precision=0, minimum=0, label="vision neuron groups"),
                 heads_text=gr.Number(0, precision=0, minimum=0, label="text heads"),
                 groups_text=gr.Number(0, precision=0, minimum=0, label="text neuron groups"))


def plan_views(session: dict, by: str, budget: dict, state) -> dict:
    """The before → after table, notes and crossed-out heatmap of the budget, from the session's scores."""
    df = hs.scores_or_none(session, state)
    if df is None:
        return {"plan_table": None, "plan_notes": "Compute scores (tab 2) to plan a budget.",
                "plan_heatmap": figures.empty("No scores yet")}
    try:
        plan, table, notes = hp.preview(df, hp.budget_of(*(budget[k] for k in BUDGET)), by)
    except Exception as e:
        if not user_error(e):
            raise
        return {"plan_table": None, "plan_notes": f"**Cannot plan this budget:** {e}",
                "plan_heatmap": figures.heatmaps(df, "mope")}
    return {"plan_table": table, "plan_notes": notes,
            "plan_heatmap": figures.heatmaps(df, "mope", removed={u.name for u in plan.removed})}


def job_views(session: dict, state) -> dict:
    """The job's status line, its loss / eval plot with reference lines, its eval table; and the jobs table."""
    line, curve, history, _ = hj.job_state(session["pd_job"], state)
    job = hj.job_or_none(state.store(), session["pd_job"]) if session["pd_job"] else None
    references, steps = (job.get("references"), job["params"].get("steps")) if job else (None, None)
    return {"pd_status": line, "loss_plot": figures.losses(curve, history, references, steps),
            "evals": pd.DataFrame(history).round(4) if history else pd.DataFrame(columns=["step"]),
            "jobs": hj.jobs_table(state)}


def lists(state) -> dict:
    """The saved models (newest first) in this tab and in the compare tab, and the jobs table."""
    models = hm.saved_models(state)
    return {"saved": gr.update(choices=models, value=models[0] if models else None),
            "chosen": gr.update(choices=hm.model_choices(models)), "jobs": hj.jobs_table(state)}


def saved_views(saved: str | None, state) -> dict:
    """The chosen saved model's card and its last ONNX export."""
    return {"saved_card": hp.model_card(saved, state), "export_status": hp.export_status(saved, state)}


def export(saved: str | None, state) -> dict:
    message = hp.start_export(saved, state)
    gr.Info(message)
    return {"export_status": message, "jobs": hj.jobs_table(state)}


def follow(sess: dict, prune_seen, by: str, budget: dict, state) -> dict:
    """A timer tick: redraw the plan when the session's scores changed, the job views (and the jobs table) when
    its job moved, and the saved-model lists when the job has just ended."""
    seen = (hj.signature(sess["pd_job"], state), sess["scores"])
    last = prune_seen or (None, None)
    out = {"prune_seen": seen}
    if seen[1] != last[1]:
        out.update(plan_views(sess, by, budget, state))
    if seen[0] != last[0]:
        out.update(job_views(sess, state))
        if seen[0] and seen[0][1] in ("done", "failed", "cancelled"):  # a finished job may have saved a model
            out.update(lists(state))
    return out


def _wire_saved(page: Page, state) -> None:
    """The saved-models list: refresh, zip, model card, origin, ONNX export."""
    private = {"api_visibility": "private"}
    page.on(page.refresh.click, lambda: lists(state), [], ["saved", "chosen", "jobs"], **private)
    page.on(page.zip_button.click, lambda saved: {"download": hp.model_zip(saved, state)}, ["saved"], ["download"],
            api_name="zip_model")
    page.on(page.saved.change, lambda saved: saved_views(saved, state), ["saved"], ["saved_card", "export_status"],
            api_name="saved_card")
    page.on(page.export_button.click, lambda saved: export(saved, state), ["saved"], ["export_status", "jobs"],
            api_name="export_onnx")
    page.on(page.refresh.click, lambda saved: saved_views(saved, state), ["saved"], ["saved_card", "export_status"],
            **private)
    page.on(page.saved.change, lambda saved: {"saved_origin": hc.origins([saved], state) if saved else ""}, ["saved"],
            ["saved_origin"], **private)


def wire(page: Page, loaded) -> None:
    state = page.state

    def restore(session, by, **budget):
        _sid, sess = page.session(session)
        return {**plan_views(sess, by, budget, state), **job_views(sess, state), **lists(state)}

    def draw_plan(session, by, **budget):
        return plan_views(page.session(session)[1], by, budget, state)

    def draw_job(session):
        return job_views(page.session(session)[1], state)

    def start_pd(session, by, device, steps, batch, data, name, iterative=1, step_schedule="even", **budget):
        sid, before = page.session(session)
        after, message = hp.start_prune_distill(before, hp.budget_of(*(budget[k] for k in BUDGET)), by, device,
                                                steps, batch, data, name, state, iterative, step_schedule)
        page.save(sid, after, before)
        gr.Info(message)
        return {"session": sid}

    def cancel_pd(session):
        gr.Info(hj.cancel(page.session(session)[1]["pd_job"], state))

    def resume_pd(session):
        sid, before = page.session(session)
        new, message = hj.resume(before["pd_job"], state)
        page.save(sid, {**before, "pd_job": new}, before)
        gr.Info(message)
        return {"session": sid}

    def plan_stability(session, by, **budget):
        budget = hp.budget_of(*(budget[k] for k in BUDGET))
        return {"stability_line": hp.stability_text(page.session(session)[1], budget, by, state)}

    def tick(session, prune_seen, by, **budget):
        return follow(page.session(session)[1], prune_seen, by, budget, state)

    private = {"api_visibility": "private"}
    plan = {"inputs": ["session", "by", *BUDGET], "outputs": PLAN_VIEWS, "show_progress": "hidden"}
    page.on(loaded.then, restore, ["session", "by", *BUDGET], [*PLAN_VIEWS, *JOB_VIEWS, "saved", "chosen"],
            **private)
    page.on(page.events["draw_scores"].then, draw_plan, **plan, api_name="draw_plan")
    page.on(page.events["start_scores"].then, draw_plan, **plan, **private)
    for control in ["by", *BUDGET]:  # a slider being dragged redraws with its latest value
        page.on(page.parts[control].change, draw_plan, **plan, trigger_mode="always_last", **private)
    started = page.on(page.start.click, start_pd, ["session", "by", "device", "steps", "batch", "data", "name",
                                                   *BUDGET, "iterative", "step_schedule"], ["session"],
                      api_name="prune_and_distill")
    page.on(page.stability.click, plan_stability, ["session", "by", *BUDGET], ["stability_line"],
            api_name="plan_stability")
    page.on(started.then, draw_job, ["session"], JOB_VIEWS, **private)
    page.on(page.cancel_pd.click, cancel_pd, ["session"], **private)
    resumed = page.on(page.resume_pd.click, resume_pd, ["session"], ["session"], **private)
    page.on(resumed.then, draw_job, ["session"], JOB_VIEWS, **private)
    _wire_saved(page, state)
    page.remember(["by", *BUDGET, "device", "steps", "batch", "data", "name", "iterative", "step_schedule"], loaded)

    def plan_csv(session, by, **budget):
        return {"plan_csv": he.table_csv(plan_views(page.session(session)[1], by, budget, state)["plan_table"],
                                         "plan", state)}

    def evals_csv(session):
        _line, curve, history, _ = hj.job_state(page.session(session)[1]["pd_job"], state)
        frames = [pd.DataFrame(rows) for rows in (curve, history) if rows]
        table = frames[0].merge(frames[1], on="step", how="outer") if len(frames) == 2 else (frames or [None])[0]
        return {"evals_csv": he.table_csv(table, "distillation", state)}

    page.download("plan_csv", plan_csv, ["session", "by", *BUDGET])
    page.download("evals_csv", evals_csv, ["session"])
    page.on(page.timer.tick, tick, ["session", "prune_seen", "by", *BUDGET],
            ["prune_seen", *PLAN_VIEWS, *JOB_VIEWS, "saved", "chosen"],
            quiet=True, show_progress="hidden", **private)
