"""Tab 3: the budget the controls describe, its plan preview, prune-and-distill jobs, saved models: zips, model
cards, ONNX exports."""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

import mope
from mope.errors import MopeError
from mope.planning import Budget

from ..security import allowed_path, check_scores, check_spec, check_training_data
from ..state import AppState
from .jobs import ended_line, progress_line, submit
from .scores import scores_calibration, scores_table

CARD_CHARS = 20_000  # a model card is a few kB; a larger README.md is cut


def budget_of(mode: str, keep_vision: float, keep_text: float, strategy: str, measure: str, layers_vision: int,
              layers_text: int, heads_vision: int, groups_vision: int, heads_text: int, groups_text: int) -> Budget:
    """The Budget the controls describe: keep fractions per tower, or explicit counts per layer."""
    layers = {t: int(n) for t, n in (("vision", layers_vision), ("text", layers_text)) if n}
    if mode == "explicit counts":
        heads = {t: int(n) for t, n in (("vision", heads_vision), ("text", heads_text)) if n}
        neurons = {t: int(n) for t, n in (("vision", groups_vision), ("text", groups_text)) if n}
        towers = tuple(sorted(set(heads) | set(neurons) | set(layers))) or ("vision",)
        return Budget(heads=heads or None, neurons=neurons or None, layers=layers or None, strategy=strategy,
                      measure=measure, towers=towers)
    keep = {t: float(k) for t, k in (("vision", keep_vision), ("text", keep_text)) if k < 1}
    towers = tuple(sorted(set(keep) | set(layers))) or ("vision",)
    return Budget(keep=keep or None, layers=layers or None, strategy=strategy, measure=measure, towers=towers)


def preview(df: pd.DataFrame, budget: Budget, by: str) -> tuple[mope.Plan, pd.DataFrame, str]:
    """(plan, before → after table, notes) — pure: no model, no scoring."""
    towers = set(df.tower)
    missing = [t for t in budget.towers if t not in towers]
    if missing:
        raise MopeError(f"these scores have no {' or '.join(missing)} tower: score it, or leave its budget at 1")
    if budget.per_tower("layers") and "layer" not in set(df.kind):
        raise MopeError("these scores have no layer units: recompute them to plan depth pruning")
    p = mope.plan(df, budget, by=by)
    table = p.summary()
    for what in ("params", "GFLOPs"):
        table[f"{what} kept"] = (table[f"{what} after"] / table[f"{what} before"]).map("{:.0%}".format)
    table["GFLOPs before"] = table["GFLOPs before"].round(4)
    table["GFLOPs after"] = table["GFLOPs after"].round(4)
    notes = list(p.notes)
    if budget.per_tower("layers"):
        notes.append("Layers here are ranked by the original model's layer scores; pruning re-scores them on the "
                     "width-pruned model first (width, then depth), so the job may pick other layers.")
    return p, table, "\n".join(f"- {n}" for n in notes) or "- Nothing removed."


def start_prune_distill(session: dict, budget: Budget, by: str, device: str, steps: int, batch_size: int,
                        data: str, name: str, state: AppState, iterative: int = 1,
                        step_schedule: str = "even") -> tuple[dict, str]:
    """Submit a prune-and-distill job that prunes exactly the previewed plan (same scores, same budget), or,
    with iterative > 1, reaches that budget in steps re-scored on the scores' own calibration data."""
    if not session["scores"]:
        raise MopeError("compute MoPE scores first (tab 2): the plan ranks units by them")
    if device == "cuda" and not torch.cuda.is_available():
        raise MopeError("this machine has no CUDA GPU: choose auto or cpu")
    spec, scores = check_spec(session["spec"], state), check_scores(session["scores"], state)
    data = check_training_data(data, state)
    preview(scores_table(str(scores), state), budget, by)  # a budget the preview refuses never becomes a job
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in str(name or "").strip()[:80]) or "pruned"
    out = state.saved_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    params = {"model": spec, "out": str(out), "scores": str(scores), "budget": asdict(budget),
              "by": by, "distill_data": data, "steps": int(steps), "batch_size": int(batch_size),
              "eval_every": max(1, int(steps) // 5), "device": None if device == "auto" else device,
              **iterative_params(session, iterative, step_schedule, state)}
    job = submit(state, "prune-and-distill", params)
    return {**session, "pd_job": job}, f"Prune & distill started (job {job}) → {out}"


def iterative_params(session: dict, iterative, step_schedule: str, state: AppState) -> dict:
    """The job params of an iterative plan: K, the schedule, and the calibration data the scores came from."""
    from mope.pipeline import check_steps

    whole = isinstance(iterative, (int, float)) and not isinstance(iterative, bool) and float(iterative).is_integer()
    steps = int(iterative) if whole else iterative  # the page's Number sends 3.0; anything else check_steps refuses
    check_steps(steps, step_schedule)
    if steps == 1:
        return {}
    data, protocol, n = scores_calibration(session, state, "iterative pruning")
    # the metric: the scores' own (prune_model)
    return {"iterative": steps, "step_schedule": step_schedule, "data": data, "task": protocol, "n": n}


def stability_text(session: dict, budget: Budget, by: str, state: AppState) -> str:
    """How many of the previewed plan's units stay removed over bootstrap resamples of the calibration images."""
    from mope.scoring import per_image
    from mope.stability import stability_line, with_stability

    if not session["scores"]:
        raise MopeError("compute MoPE scores first (tab 2)")
    if by != "mope":
        return f"Stability is measured for MoPE plans (their per-image results); this plan ranks by {by}."
    df = scores_table(str(check_scores(session["scores"], state)), state)
    matrix = per_image(df)
    if matrix is None:
        return "Stability: no per-image results are cached for these scores (computed elsewhere): score them here."
    p = with_stability(preview(df, budget, by)[0], df, matrix, per_image_loss=per_image(df, "mope_loss"))
    return "**Plan stability** — " + stability_line(p.stability)


def saved_folder(folder: str, state: AppState) -> Path:
    """A saved model folder chosen on the page: inside the models folder (symlinks resolved), with pruning.json."""
    if not folder:
        raise MopeError("pick a saved model first")
    path = allowed_path(folder, [state.saved_dir.resolve()], "model")
    if not (path / "pruning.json").is_file():
        raise MopeError(f"{str(folder)[:200]} is not a saved model folder")
    return path


def model_zip(folder: str, state: AppState) -> str:
    """A zip of a saved model folder for download (made once, atomically)."""
    path = saved_folder(folder, state)
    target = state.home / "downloads" / f"{path.parent.name}-{path.name}.zip"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = shutil.make_archive(str(target.with_suffix("")) + ".partial", "zip", path)
        Path(partial).rename(target)
    return str(target)


def model_card(folder: str, state: AppState) -> str:
    """The saved model's README.md model card, without its YAML front matter ('' when none is chosen)."""
    if not folder:
        return ""
    card = saved_folder(folder, state) / "README.md"
    if not card.is_file():
        return "*This model was saved before models got a card (no README.md in its folder).*"
    text = card.read_text(encoding="utf-8", errors="replace")[:CARD_CHARS]
    body = text.split("---\n", 2)[2] if text.startswith("---\n") and text.count("---\n") >= 2 else text
    return body.lstrip()


def onnx_folder(path: Path, state: AppState) -> Path:
    """Where the app exports a saved model to ONNX: HOME/models/onnx/<its folder's parent>-<its name>."""
    return state.saved_dir / "onnx" / f"{path.parent.name}-{path.name}"


def start_export(folder: str, state: AppState) -> str:
    """Queue an ONNX export job for a saved model; refused when it was exported already."""
    path = saved_folder(folder, state)
    out = onnx_folder(path, state)
    if out.exists():
        raise MopeError(f"this model is exported already: {out}")
    job = submit(state, "export", {"model": str(path), "out": str(out)})
    return f"Export to ONNX started (job {job}) → {out}"


def export_status(folder: str, state: AppState) -> str:
    """The last ONNX export of a saved model: running, failed, or done with its checks; '' when none."""
    if not folder:
        return ""
    path = saved_folder(folder, state)
    jobs = [j for j in state.store().jobs() if j["kind"] == "export" and j["params"].get("model") == str(path)]
    if not jobs:
        return ""
    job = jobs[-1]
    if job["status"] in ("queued", "running"):
        return progress_line(job)
    if job["status"] != "done":
        return ended_line(job)
    diffs = ", ".join(f"{t} {d:.1e}" for t, d in job["result"]["max_abs_diff"].items())
    return (f"Exported to ONNX (opset {job['result']['opset']}): `{job['result']['export']}` — max |onnxruntime − "
            f"torch| {diffs}")
