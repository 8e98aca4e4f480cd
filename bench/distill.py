"""Prune, then distill: how much zero-shot accuracy distillation recovers within a time budget.

1. Fine-tuning stage (the paper's setting): the demo model's vision tower pruned to 50% of its
   head+FFN parameters (uniform), ranked by MoPE and, for comparison, by magnitude; each student
   distilled from the unpruned teacher for at most --minutes on this machine (the step count is set from
   timed probe steps so the cosine schedule ends when the time does, and the magnitude student gets the
   same number of steps as the MoPE one); colour×shape acc1 on
   1,000 held-out images before and after, and as a fraction of the teacher's.
2. Pre-training stage: both towers pruned to 50% by MoPE (retrieval metric), distilled the same way;
   retrieval recalls before and after.

    python bench/distill.py [--minutes 5] [--lr 1e-3] [--batch-size 64] [--out bench/results]   → distill.csv, distill.png
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python bench/...

import argparse
import time

import pandas as pd

import mope
from mope.distill import DistillConfig, distill
from mope.planning import Budget
from mope.scoring import score


def timed_stop(deadline: float):
    return lambda: time.time() > deadline


def run(name, teacher, student, held_out, args, out, metric_keys, teacher_metrics, rows, steps=None) -> int:
    """Distill within the time budget (for `steps`, else as many as fit); returns the planned steps."""
    before = mope.evaluate(student, held_out)
    start = time.time()
    deadline = start + args.minutes * 60
    config = DistillConfig(steps=steps or fitting_steps(teacher, student, args, deadline), batch_size=args.batch_size,
                           lr=args.lr, warmup=20, temperature=args.temperature, contrastive=args.contrastive,
                           eval_every=10**9, checkpoint_every=10**9)
    distilled = distill(teacher, student, "shapes", config, out / "checkpoints" / name.replace(" ", "_"),
                        should_stop=timed_stop(deadline))
    after = mope.evaluate(distilled, held_out)
    seconds = time.time() - start
    steps = distilled.info["distill"]["steps_done"]
    for key in metric_keys:
        rows.append({"setting": name, "metric": key, "teacher": teacher_metrics[key], "pruned": before[key],
                     "distilled": after[key], "recovered_fraction_of_teacher": after[key] / teacher_metrics[key],
                     "steps": steps, "planned_steps": config.steps, "seconds": round(seconds)})
        print(f"{name:32s} {key:26s} teacher {teacher_metrics[key]:.4f} pruned {before[key]:.4f} -> distilled "
              f"{after[key]:.4f} ({after[key] / teacher_metrics[key]:.1%} of teacher; {steps}/{config.steps} steps, "
              f"{seconds:.0f}s)", flush=True)
    return config.steps


def fitting_steps(teacher, student, args, deadline: float) -> int:
    """Steps that fit before the deadline, from 8 timed steps on a copy (inside the time budget), so the
    cosine schedule reaches its end when time runs out."""
    import copy
    import tempfile

    probe = DistillConfig(steps=10, batch_size=args.batch_size, eval_every=10**9, checkpoint_every=10**9)
    marks = []
    with tempfile.TemporaryDirectory() as tmp:
        distill(teacher, copy.deepcopy(student), "shapes", probe, tmp,
                progress=lambda step, total, eta, info: marks.append(time.time()))
    per_step = (marks[-1] - marks[1]) / (len(marks) - 2)  # the first step pays one-time costs
    return max(1, int((deadline - time.time()) / per_step))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--contrastive", type=float, default=0.0, help="weight of the ground-truth contrastive loss")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = mope.load_model("demo", device="cpu")
    rows: list[dict] = []

    calibration = mope.load_task("shapes", n=256, seed=2000)
    held_out = mope.load_task("shapes", n=1000, seed=1000)
    teacher_zs = mope.evaluate(teacher, held_out)
    scores = score(teacher, calibration, towers=["vision"], units=["head", "neurons"], metric="acc1", cache=False)
    planned = None  # the magnitude student gets the MoPE student's steps: the same distillation
    for by in ("mope", "magnitude"):
        p = mope.plan(scores, Budget(keep=0.5, towers=("vision",)), by=by)
        print(f"vision 50% by {by}: {p.notes[0]}")
        planned = run(f"vision 50% by {by}", teacher, mope.prune(teacher, p), held_out, args, out, ["acc1"],
                      teacher_zs, rows, steps=planned)

    calibration_r = mope.load_task("shapes", protocol="retrieval", n=256, seed=2000)
    held_out_r = mope.load_task("shapes", protocol="retrieval", n=1000, seed=1000)
    teacher_r = mope.evaluate(teacher, held_out_r)
    scores_r = score(teacher, calibration_r, towers=["vision", "text"], units=["head", "neurons"], cache=False,
                     baselines=())
    p = mope.plan(scores_r, Budget(keep=0.5, towers=("vision", "text")))
    print(f"both towers 50% by mope: {'; '.join(p.notes)}")
    run("both towers 50% by mope", teacher, mope.prune(teacher, p), held_out_r, args, out,
        ["text_retrieval_recall@5", "image_retrieval_recall@5"], teacher_r, rows)

    df = pd.DataFrame(rows)
    df.to_csv(out / "distill.csv", index=False)
    plot(df, out / "distill.png")


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{s}\n{m}" for s, m in zip(df.setting, df.metric)]
    x = range(len(df))
    fig, ax = plt.subplots(figsize=(8, 4))
    for offset, column in ((-0.27, "teacher"), (0, "pruned"), (0.27, "distilled")):
        ax.bar([i + offset for i in x], df[column], width=0.27, label=column)
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_ylabel("score")
    ax.set_title("Demo CLIP: pruned vs distilled (time-boxed, CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
