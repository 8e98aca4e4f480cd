"""Does MoPE still win at high compression when it re-scores as it prunes? One-shot vs iterative MoPE vs
magnitude, Taylor and random, over several calibration seeds, paired by seed.

Demo model, vision heads + neuron groups scored on `--calibration` images of each calibration seed
(2000 + s; metric `--metric`, the continuous zero-shot loss by default), then 25 / 50 / 75% of the
vision head+FFN parameters removed (uniform per layer) by each ranking, and colour×shape acc1 measured
on `--eval` held-out images (seed 1000). Iterative MoPE reaches the same budget in K steps (the one-shot
plan's heads and neuron groups per layer, shared out over the steps), re-scoring the pruned model before each
step on prune_model's default share of the calibration images (rescore_images). The CSV's `heads` / `groups`
columns count what each pruned model lost. With `--distill-steps N`, the pruned models of the levels in
`--distill-removed` are also distilled for N steps (the same N, data and seed for every ranking, every
calibration seed) and evaluated again.

    python bench/fidelity.py [--seeds 5] [--iterative 2,4,8] [--distill-steps 0] [--out bench/results]
        → fidelity.csv, fidelity.png, the paired-difference table and the cost of iterative scoring
    python bench/fidelity.py --cost-only [--cost-every-image] → only the cost lines
    python bench/fidelity.py --report fidelity.csv → the tables of a finished or stopped run
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python bench/...

import argparse
import os
import tempfile
import time
from unittest import mock

import pandas as pd

import mope
from mope import defaults
from mope.distill import DistillConfig, distill
from mope.pipeline import prune_model
from mope.planning import Budget
from mope.scoring import score
from mope.study import compression_curve, curve_model, iterative_name

BASELINES = {"magnitude": "magnitude", "Taylor": "taylor", "random": "random"}


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clip = mope.load_model("demo", device="cpu")
    if args.cost_only:
        print(cost_line(clip, args))
        return
    if args.report:  # the tables and plot of a finished or stopped run's CSV
        report(pd.read_csv(args.report), args, out)
        return
    held_out = mope.load_task("shapes", n=args.eval, seed=1000)
    rows = []
    for s in range(args.seeds):
        calibration = mope.load_task("shapes", n=args.calibration, seed=2000 + s)
        scores = score(clip, calibration, towers=["vision"], units=["head", "neurons"], metric=args.metric, seed=s)
        rankings = {"MoPE one-shot": "mope", **BASELINES}
        curve = compression_curve(clip, scores, held_out, removed=args.removed, rankings=rankings,
                                  iterative=args.iterative, calibration=calibration, metric="acc1")
        rows += [{**r, "seed": s, "distilled": False} for r in curve.to_dict("records") if r["removed"] > 0]
        print(f"seed {s}: " + "  ".join(f"{r['ranking']}@{r['removed']:.0%}={r['acc1']:.3f}"
                                        for r in rows if r["seed"] == s), flush=True)
        if args.distill_steps:
            rows += distilled_rows(clip, scores, calibration, held_out, rankings, args, s)
        pd.DataFrame(rows).to_csv(out / "fidelity.csv", index=False)  # after every seed: a stopped run keeps it
    report(pd.DataFrame(rows), args, out)
    print("\n" + cost_line(clip, args))


def report(df: pd.DataFrame, args, out: Path) -> None:
    """The plot and, with and without distillation, the mean table and each iterative K's paired differences."""
    plot(df[~df.distilled], out / "fidelity.png")
    for distilled, part in df.groupby("distilled"):
        print(f"\n{'after ' + str(args.distill_steps) + ' distillation steps' if distilled else 'no distillation'}:")
        print(mean_table(part).to_string(float_format=lambda v: f"{v:.3f}"))
        for k in args.iterative:
            print(f"\n{iterative_name(k)} minus each ranking (mean ± std over seeds, seeds ahead / seeds):")
            print(paired_table(part, iterative_name(k)).to_string())


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--calibration", type=int, default=128)
    parser.add_argument("--eval", type=int, default=500)
    parser.add_argument("--metric", default="loss")
    parser.add_argument("--removed", default="0.25,0.5,0.75")
    parser.add_argument("--iterative", default="2,4,8")
    parser.add_argument("--distill-steps", type=int, default=0)
    parser.add_argument("--distill-removed", default="0.75")
    parser.add_argument("--cost-only", action="store_true", help="only the cost of iterative scoring")
    parser.add_argument("--cost-every-image", action="store_true", help="the cost also with every image re-scored")
    parser.add_argument("--report", default=None, help="print the tables of this fidelity.csv (e.g. a stopped run's)")
    args = parser.parse_args()
    args.removed = [float(v) for v in args.removed.split(",")]
    args.iterative = [int(v) for v in args.iterative.split(",") if v]
    args.distill_removed = [float(v) for v in args.distill_removed.split(",") if v]
    return args


def distilled_rows(clip, scores, calibration, held_out, rankings, args, seed) -> list[dict]:
    """Each ranking's pruned model at the distill levels, distilled with the same steps, data and seed."""
    curves = {**{name: (col, 1) for name, col in rankings.items()},
              **{iterative_name(k): ("mope", k) for k in args.iterative}}
    rows = []
    for fraction in args.distill_removed:
        for name, (by, steps) in curves.items():
            pruned = curve_model(clip, scores, Budget(keep=1 - fraction), by, steps, calibration)
            with tempfile.TemporaryDirectory() as tmp:
                student = distill(clip, pruned, "shapes", DistillConfig(steps=args.distill_steps, eval_every=10**9,
                                                                        checkpoint_every=10**9, seed=seed), tmp)
            acc1 = mope.evaluate(student, held_out)["acc1"]
            rows.append({"removed": fraction, "ranking": name, "acc1": acc1, "seed": seed, "distilled": True})
            print(f"seed {seed}: {name}@{fraction:.0%} distilled {args.distill_steps} steps acc1 {acc1:.3f}", flush=True)
    return rows


def mean_table(df: pd.DataFrame) -> pd.DataFrame:
    """acc1 mean ± std over seeds, a row per removed fraction, a column per ranking."""
    cells = df.groupby(["removed", "ranking"], sort=False)["acc1"].agg(lambda a: f"{a.mean():.3f} ± {a.std():.3f}")
    return cells.unstack()


def paired_table(df: pd.DataFrame, ours: str) -> pd.DataFrame:
    """Per removed fraction and other ranking: mean ± std of (ours − other) over seeds, and seeds ahead."""
    wide = df.pivot_table(index=["removed", "seed"], columns="ranking", values="acc1")
    cells = {}
    for other in [c for c in wide.columns if c != ours]:
        diff = (wide[ours] - wide[other]).groupby(level="removed")
        cells[other] = diff.agg(lambda d: f"{d.mean():+.3f} ± {d.std():.3f} ({int((d > 0).sum())}/{len(d)})")
    return pd.DataFrame(cells)


def cost_line(clip, args) -> str:
    """Iterative (K=4) scoring cost over one one-shot sweep, both from scratch, on seed 0's data: every unit
    re-scored on the default choice of calibration images (rescore_images="auto"), even and geometric schedules (and,
    with --cost-every-image, on every image). Run in an empty MOPE_HOME: nothing cached is read, so no plan
    gets a stability bootstrap (that needs cached per-image results) and only scoring is timed."""
    with tempfile.TemporaryDirectory() as home, mock.patch.dict(os.environ, {"MOPE_HOME": home}):
        calibration = mope.load_task("shapes", n=args.calibration, seed=2000)
        kw = dict(towers=["vision"], units=["head", "neurons"], metric=args.metric, baselines=(), cache=False)
        start = time.perf_counter()
        scores = score(clip, calibration, **kw)
        one_shot = time.perf_counter() - start
        lines = [f"one-shot sweep (90 units, {args.calibration} images): {one_shot:.1f} s"]
        default = defaults.prune()["rescore_images"]
        variants = [("even", default), ("geometric", default)] + ([("even", None)] if args.cost_every_image else [])
        for fraction in args.removed:
            for schedule, images in variants:
                start = time.perf_counter()
                pruned = prune_model(clip, calibration, Budget(keep=1 - fraction), scores=scores, steps=4,
                                     step_schedule=schedule, rescore_images=images, metric=args.metric, baselines=(),
                                     cache=False)
                rescoring = time.perf_counter() - start
                counts = "/".join(str(len(calibration) if r["scored_on"]["images"] == "all" else len(r["scored_on"]["images"]))
                                  for r in pruned.info["iterative"]["record"][1:] if "skipped" not in r)
                used = f"rescore images {'all' if images is None else images}: {counts}"
                lines.append(f"iterative x4 ({schedule}, {used}) at {fraction:.0%} removed: one-shot sweep + re-scoring "
                             f"{rescoring:.1f} s = {(one_shot + rescoring) / one_shot:.2f}x one sweep")
    return "\n".join(lines)


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, g in df.groupby("ranking", sort=False):
        stats = g.groupby("removed")["acc1"].agg(["mean", "std"])
        ax.errorbar(stats.index * 100, stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=name)
    ax.set_xlabel("vision head + FFN parameters removed (%)")
    ax.set_ylabel("zero-shot acc1 (colour×shape, 64-way)")
    ax.set_title("Demo CLIP pruned without distillation: mean ± std over calibration seeds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
