"""Zero-shot accuracy after pruning, without distillation: MoPE vs magnitude vs Taylor vs random.

Demo model; vision heads and neuron groups scored on 256 calibration images (seed 2000); then
25 / 50 / 75% of the vision tower's head+FFN parameters removed (uniform per layer, as in the
paper) by each ranking, and colour×shape acc1 measured on 1,000 held-out images (seed 1000) of the
physically pruned model. MoPE is computed twice: with acc1 (the paper's metric) and with the
zero-shot cross-entropy (continuous, no ties on a small calibration set).

    python bench/prune_curve.py [--out bench/results]   → prune_curve.csv, prune_curve.png
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python bench/...

import argparse

import pandas as pd

import mope
from mope.scoring import score
from mope.study import compression_curve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--eval", type=int, default=1000)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clip = mope.load_model("demo", device="cpu")
    calibration = mope.load_task("shapes", n=args.calibration, seed=2000)
    held_out = mope.load_task("shapes", n=args.eval, seed=1000)
    kw = dict(towers=["vision"], units=["head", "neurons"], cache=False)
    table = score(clip, calibration, metric="acc1", **kw)
    table["mope_loss"] = score(clip, calibration, metric="loss", baselines=(), **kw)["mope"].values
    rankings = {"MoPE (acc1)": "mope", "MoPE (loss)": "mope_loss", "magnitude": "magnitude", "Taylor": "taylor",
                "random": "random"}
    df = compression_curve(clip, table, held_out, rankings=rankings, metric="acc1",
                           progress=lambda done, total, eta, rows: print(
                               f"remove {rows[-1]['removed']:.0%} ({rows[-1]['heads']} heads, {rows[-1]['groups']} "
                               f"groups) by {rows[-1]['ranking']:12s} acc1 {rows[-1]['acc1']:.4f}", flush=True))
    df.to_csv(out / "prune_curve.csv", index=False)
    plot(df, out / "prune_curve.png")
    print(df.pivot(index="removed", columns="ranking", values="acc1").to_string(float_format=lambda v: f"{v:.3f}"))


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, g in df.groupby("ranking", sort=False):
        ax.plot(g["removed"] * 100, g["acc1"], marker="o", label=name)
    ax.set_xlabel("vision head + FFN parameters removed (%)")
    ax.set_ylabel("zero-shot acc1 (colour×shape, 64-way)")
    ax.set_title("Demo CLIP pruned without distillation")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
