"""What each job kind does: a library call fed by the job's params, reporting through a JobContext."""
from __future__ import annotations

import time
from pathlib import Path

from .errors import MopeError


def _ping(p, ctx) -> dict:
    end = time.time() + p["seconds"]
    while time.time() < end:
        if ctx.should_stop():
            return {"pong": False}
        time.sleep(min(0.05, max(0.0, end - time.time())))
    return {"pong": True}


def _evaluate(p, ctx) -> dict:
    from . import evaluate, load_model, load_task

    clip = load_model(p["model"], device=p["device"])
    metrics = evaluate(clip, load_task(p["data"], kind=p["task"], n=p["n"]))
    ctx.metrics(metrics)
    return {"metrics": metrics}


def _scores_path(job_id_hint: str) -> Path:
    from .cache import mope_home

    return mope_home() / "results" / f"scores-{job_id_hint}.csv"


def _score(p, ctx) -> dict:
    from . import load_model, load_task
    from .scoring import save_scores, score

    clip = load_model(p["model"], device=p["device"])
    task = load_task(p["data"], kind=p["task"], n=p["n"])
    df = score(clip, task, towers=p["towers"], units=p["units"], metric=p["metric"],
               progress=lambda done, total, eta, rows: ctx.progress(done, total, eta, f"{done}/{total} units"),
               should_stop=ctx.should_stop)
    path = _scores_path(ctx.job_id)
    save_scores(df, path)
    return {"scores": str(path), "units": len(df)}


def _budget(p):
    from .plan import Budget

    return Budget(keep=p["keep"], layers=p["layers"] or None, strategy=p["strategy"], towers=tuple(p["towers"]))


def _prune(p, ctx) -> dict:
    from . import load_model, load_task, save_pruned
    from .scoring import load_scores
    from .surgery import prune_model

    clip = load_model(p["model"], device=p["device"])
    scores = load_scores(p["scores"]) if p["scores"] else None
    task = load_task(p["data"], n=p["n"]) if scores is None or p["layers"] else None
    pruned = prune_model(clip, task, _budget(p), scores=scores, should_stop=ctx.should_stop,
                         progress=lambda done, total, eta, rows: ctx.progress(done, total, eta, "scoring"))
    save_pruned(pruned, p["out"])
    return {"model": p["out"], "plans": pruned.info["plan"]}


def _distill(p, ctx, teacher=None, student=None, out=None) -> dict:
    from . import load_model, load_task, save_pruned
    from .distill import DistillConfig, distill

    teacher = teacher or load_model(p["teacher"], device=p["device"])
    student = student or load_model(p["student"], device=p["device"])
    out = Path(out or p["out"])
    config = DistillConfig(steps=p["steps"], batch_size=p["batch_size"], lr=p["lr"])
    eval_task = load_task(p.get("eval_data") or "shapes", n=p.get("eval_n", 500))

    def progress(step, total, eta, info):
        losses = ", ".join(f"{k} {v:.4f}" for k, v in info["losses"].items() if k != "step")
        ctx.progress(step, total, eta, losses)
        if info["eval"]:
            ctx.metrics(info["eval"])
            ctx.log(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in info["eval"].items() if k != "step"))

    student = distill(teacher, student, p["data"], config, out, eval_task=eval_task, resume=p["resume"],
                      progress=progress, should_stop=ctx.should_stop)
    if ctx.should_stop():
        return {"checkpoint": str(out / "checkpoint")}
    final = out / "final"
    if final.exists():
        raise MopeError(f"{final} already exists")
    save_pruned(student, final)
    return {"model": str(final), "checkpoint": str(out / "checkpoint")}


def _prune_and_distill(p, ctx) -> dict:
    from . import load_model, load_task, save_pruned
    from .surgery import prune_model

    out = Path(p["out"])
    teacher = load_model(p["model"], device=p["device"])
    pruned_dir = out / "pruned"
    if not pruned_dir.exists():
        ctx.log("scoring and pruning")
        pruned = prune_model(teacher, load_task(p["data"], n=p["n"]), _budget(p), should_stop=ctx.should_stop,
                             progress=lambda done, total, eta, rows: ctx.progress(done, total, eta, "scoring"))
        save_pruned(pruned, pruned_dir)
    student = load_model(str(pruned_dir), device=p["device"])
    ctx.log("distilling")
    params = {**p, "teacher": p["model"], "student": str(pruned_dir), "data": p["distill_data"]}
    return {"pruned": str(pruned_dir), **_distill(params, ctx, teacher=teacher, student=student, out=out)}


RUNNERS = {"ping": _ping, "evaluate": _evaluate, "score": _score, "prune": _prune, "distill": _distill,
           "prune-and-distill": _prune_and_distill}
