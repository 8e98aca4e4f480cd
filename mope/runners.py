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
    metrics = evaluate(clip, load_task(p["data"], protocol=p["task"], n=p["n"]))
    ctx.metrics(metrics)
    return {"metrics": metrics}


def scores_path(fingerprint: str) -> Path:
    """Where a scores table is kept for jobs and the app: named by its fingerprint, so one file per result."""
    from .settings import results_dir

    return results_dir() / f"scores-{fingerprint[:20]}.csv"


def _score(p, ctx) -> dict:
    from . import load_model, load_task
    from .scoring import save_scores, score

    clip = load_model(p["model"], device=p["device"])
    task = load_task(p["data"], protocol=p["task"], n=p["n"])

    def progress(done, total, eta, rows):
        exact = not rows or "round" not in rows[-1]
        if exact and done >= total:  # what follows the last unit takes a while: say what it is, with no "0 s left"
            ctx.progress(done, total, None, "every unit scored; computing the baselines (magnitude, random, "
                                            "Taylor) and writing the table")
        else:
            ctx.progress(done, total, eta, _score_status(done, total, rows))
        ctx.partial(rows)

    df = score(clip, task, towers=p["towers"], units=p["units"], metric=p["metric"], progress=progress,
               should_stop=ctx.should_stop, schedule=p.get("schedule", "exact"),
               first_table_seconds=p.get("first_table_seconds"),
               on_table=lambda table: save_scores(table, round_scores_path(ctx.job_id, table.attrs["anytime"]["round"])))
    path = scores_path(df.attrs["fingerprint"])
    save_scores(df, path)
    return {"scores": str(path), "units": len(df), "fingerprint": df.attrs["fingerprint"]}


def round_scores_path(job_id: str, round_: int) -> Path:
    """Where an anytime score job keeps the table of each round (plannable while it runs or after a stop)."""
    from .settings import results_dir

    return results_dir() / f"scores-{job_id}-round{round_}.csv"


def latest_round_scores(job_id: str) -> Path | None:
    """The table of an anytime score job's last finished round; None before its first round ends (or for a name
    that is not a job id: it goes into a file pattern)."""
    from .settings import results_dir

    if not (isinstance(job_id, str) and job_id.isalnum()):
        return None
    rounds = {}
    for path in results_dir().glob(f"scores-{job_id}-round*.csv"):
        number = path.stem.rpartition("-round")[2]
        if number.isdigit():
            rounds[int(number)] = path
    return rounds[max(rounds)] if rounds else None


def _score_status(done: int, total: int, rows: list[dict]) -> str:
    """'37/148 units', or for anytime scoring 'round 2 · 32–64 images per unit · 87 estimates'."""
    if not rows or "round" not in rows[-1]:
        return f"{done}/{total} units"
    import pandas as pd

    from .anytime import used_span

    estimates = sum(bool(r["estimate"]) for r in rows)
    return (f"round {max(r['round'] for r in rows)} · {used_span(pd.DataFrame(rows))} · {estimates} of {len(rows)} "
            "units estimates")


def _study(p, ctx) -> dict:
    from . import load_model, load_task
    from .io import atomic_write_text
    from .scoring import load_scores
    from .settings import results_dir
    from .study import compression_curve, ranking_names

    clip = load_model(p["model"], device=p["device"])
    scores = load_scores(p["scores"])
    rankings = ranking_names(p["rankings"])
    calibration = load_task(p["calibration"], n=p["calibration_n"]) if p["calibration"] else None
    df = compression_curve(clip, scores, load_task(p["data"], n=p["n"]), removed=p["removed"], rankings=rankings,
                           towers=p["towers"], should_stop=ctx.should_stop, iterative=[int(k) for k in p["iterative"]],
                           calibration=calibration,
                           progress=lambda done, total, eta, rows: (ctx.progress(done, total, eta, "evaluating"),
                                                                    ctx.partial(rows)))
    path = results_dir() / f"study-{ctx.job_id}.csv"
    atomic_write_text(path, df.to_csv(index=False))
    return {"study": str(path), "scores_fingerprint": scores.attrs.get("fingerprint", ""), "metric": df.attrs["metric"]}


def _budget(p):
    """The job's Budget: `budget` (a dict of Budget fields) when given, else keep / layers / strategy / towers."""
    from .planning import Budget

    if p.get("budget"):
        fields = dict(p["budget"])
        return Budget(**{**fields, "towers": tuple(fields.get("towers", p["towers"]))})
    return Budget(keep=p["keep"], layers=p["layers"] or None, strategy=p["strategy"], towers=tuple(p["towers"]))


def _pruned(p, clip, ctx):
    """The model pruned by the job's budget: ranked by the given scores file, or scored now on the job's data."""
    from . import load_task
    from .pipeline import prune_model
    from .scoring import load_scores

    budget = _budget(p)
    scores = load_scores(p["scores"]) if p["scores"] else None
    iterative = p.get("iterative", 1)
    rescore = scores is None or budget.per_tower("layers") or iterative > 1
    task = load_task(p["data"], protocol=p.get("task"), n=p["n"]) if rescore else None
    return prune_model(clip, task, budget, scores=scores, by=p.get("by", "mope"), should_stop=ctx.should_stop,
                       steps=iterative, step_schedule=p.get("step_schedule", "even"),
                       rescore_margin=p.get("rescore_margin"),  # absent in older jobs: all
                       **_rescore_images(p.get("rescore_images")),
                       progress=lambda done, total, eta, rows: ctx.progress(done, total, eta, "scoring"))


def _rescore_images(value) -> dict:
    """prune_model's rescore_images from a job param: None (or absent) the library's default, 'all' every image."""
    return {} if value is None else {"rescore_images": None if value == "all" else value}


def _prune(p, ctx) -> dict:
    from . import load_model, save_pruned

    pruned = _pruned(p, load_model(p["model"], device=p["device"]), ctx)
    save_pruned(pruned, p["out"])
    return {"model": p["out"], "plans": pruned.info["plan"]}


def _distill(p, ctx, teacher=None, student=None, out=None) -> dict:
    from . import load_model, load_task, save_pruned
    from .distill import DistillConfig, distill

    teacher = teacher or load_model(p["teacher"], device=p["device"])
    student = student or load_model(p["student"], device=p["device"])
    out = Path(out or p["out"])
    config = DistillConfig(steps=p["steps"], batch_size=p["batch_size"], lr=p["lr"],
                           eval_every=p.get("eval_every", 100), checkpoint_every=p.get("eval_every", 100),
                           workers=p.get("workers"))
    eval_task = load_task(p.get("eval_data") or "shapes", n=p.get("eval_n", 500))

    def progress(step, total, eta, info):
        if info.get("references"):  # teacher and pruned-before-distillation evals, for the plot's reference lines
            ctx.store.update(ctx.job_id, references=info["references"])
        if info["losses"]:
            ctx.curve({**info["losses"], **info.get("time", {})})
        ctx.progress(step, total, eta, ", ".join(f"{k} {v:.4f}" for k, v in info["losses"].items() if k != "step"))
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
    from . import load_model, save_pruned

    out = Path(p["out"])
    teacher = load_model(p["model"], device=p["device"])
    pruned_dir = out / "pruned"
    if not pruned_dir.exists():
        ctx.log("scoring and pruning")
        save_pruned(_pruned(p, teacher, ctx), pruned_dir)
    student = load_model(str(pruned_dir), device=p["device"])
    ctx.log("distilling")
    params = {**p, "teacher": p["model"], "student": str(pruned_dir), "data": p["distill_data"]}
    return {"pruned": str(pruned_dir), **_distill(params, ctx, teacher=teacher, student=student, out=out)}


def _export(p, ctx) -> dict:
    from . import load_model
    from .export import check_export, export

    check_export(p["out"], p["format"])  # before the model loads
    clip = load_model(p["model"], device="cpu")

    def progress(done, total, eta, info):
        ctx.progress(done, total, eta, f"{info['tower']} tower exported, max |onnxruntime - torch| {info['max_abs_diff']:.1e}")

    meta = export(clip, p["out"], format=p["format"], progress=progress)
    return {"export": str(p["out"]), "max_abs_diff": meta["max_abs_diff"], "opset": meta["opset"]}


RUNNERS = {"ping": _ping, "evaluate": _evaluate, "score": _score, "study": _study, "prune": _prune,
           "distill": _distill, "prune-and-distill": _prune_and_distill, "export": _export}
