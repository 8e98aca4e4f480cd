"""Anytime vs exact MoPE scoring: how good the early tables are, and when the first one is complete.

Demo model (vision heads + neuron groups): the exact table, then the anytime rounds; after each round
the keep-0.5 plans (uniform and global) from the anytime table against the exact plans — Jaccard of the
removed sets, Spearman ρ of the scores, zero-shot acc1 of the two pruned models — as a function of the
compute spent (blocks re-run × images, as a fraction of the exact sweep's; each unit runs each image once,
so the last row is 100%) and of the wall time. With --seeds, the same for several calibration draws, then
how many met the target and how far the exact plans of two draws agree with each other. Then, with --vit, a
random-init ViT-B-32 (both towers unless --vit-towers says otherwise): the time until every unit has its
first score (round 1, sized to fit --vit-seconds at the measured speed of a block, or --vit-first images
per unit), stopped at --vit-limit seconds.

    python bench/anytime.py [--n 256] [--metric acc1] [--eval-n 500] [--seeds 1000,1001,1002] [--vit]
                            [--vit-seconds 480 | --vit-first 16] [--vit-limit 900] [--vit-towers vision,text]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python bench/...

import argparse
import itertools
import tempfile
import time

import numpy as np
import pandas as pd
import torch

import mope
from mope.anytime import flagged, used_span
from mope.planning import Budget, plan
from mope.scoring import Cancelled, score
from mope.units import enumerate_units, tower_blocks

EVAL_SEED = 2000  # held out from the calibration draw


def snapshots(clip, task, metric: str, first: int | None) -> tuple[list[tuple[float, pd.DataFrame]], pd.DataFrame]:
    """(seconds since start, table) after every anytime round, and the final table."""
    seen: list[tuple[float, pd.DataFrame]] = []
    start = time.perf_counter()
    final = score(clip, task, towers=["vision"], units=["head", "neurons"], metric=metric, baselines=(), cache=False,
                  schedule="anytime", first_round=first,
                  on_table=lambda table: seen.append((time.perf_counter() - start, table)))
    return seen, final


def work(tables: list[pd.DataFrame], layers: int) -> list[float]:
    """Blocks re-run × images after each round, as a fraction of the exact sweep's: every unit runs each image
    once, so a table's work is its images_used × the blocks its units re-run; from the round whose estimates
    first use the first-order pass on, plus that pass: every block on every image, forward and backward, counted
    as 3 forward passes (measured: about 2, the backward computing no weight gradients; the count is on the safe side)."""
    images = tables[-1]["images_used"].max()
    exact = (images * (layers - tables[-1]["layer"])).sum()
    passes = np.cumsum([flagged(t, "first_order").any() for t in tables]) > 0
    return [float(((t["images_used"] * (layers - t["layer"])).sum() + 3 * layers * images * p) / exact)
            for t, p in zip(tables, passes)]


def compare(clip, exact: pd.DataFrame, table: pd.DataFrame, eval_task, cache: dict) -> dict:
    row = {"spearman": exact["mope"].rank().corr(table["mope"].rank())}
    for strategy in ("uniform", "global"):
        budget = Budget(keep=0.5, strategy=strategy, towers=("vision",))
        want, got = plan(exact, budget), plan(table, budget)
        a, b = {u.name for u in want.removed}, {u.name for u in got.removed}
        row[f"jaccard {strategy}"] = len(a & b) / len(a | b)
        row[f"acc1 {strategy}"] = acc1(clip, got, eval_task, cache)
        row[f"acc1 {strategy} exact"] = acc1(clip, want, eval_task, cache)
    return row


def acc1(clip, p, eval_task, cache: dict) -> float:
    key = tuple(sorted(u.name for u in p.removed))
    if key not in cache:
        cache[key] = mope.evaluate(mope.prune(clip, p), eval_task)["acc1"]
    return cache[key]


def demo(args) -> None:
    """The table and target line of each calibration draw, then how often the target was met and how far the
    exact plans of different draws agree with each other (what "the exact plan" is worth on this many images)."""
    clip = mope.load_model("demo", device="cpu")
    eval_task = mope.load_task("shapes", n=args.eval_n, seed=EVAL_SEED)
    draws = [draw(clip, seed, args, eval_task) for seed in args.seeds]
    if len(draws) > 1:
        print(summary(draws))


def draw(clip, seed: int | None, args, eval_task) -> dict:
    """One calibration draw: the exact table, the anytime rounds against it, the target at <= 25% of the work."""
    task = mope.load_task("shapes", n=args.n, seed=seed)
    start = time.perf_counter()
    exact = score(clip, task, towers=["vision"], units=["head", "neurons"], metric=args.metric, baselines=(),
                  cache=False)
    exact_s = time.perf_counter() - start
    rounds, final = snapshots(clip, task, args.metric, args.first)
    spent = work([t for _, t in rounds], len(tower_blocks(clip.model, "vision")))
    same = (final["mope"].values == exact["mope"].values).all() and (final["base"].values == exact["base"].values).all()
    default = " (the app's default for zero-shot data: ties broken by the loss)" if args.metric == "acc1" else ""
    print(f"demo, vision heads + neuron groups ({len(exact)} units), {args.n} calibration images ({task.name}), "
          f"metric {args.metric}{default}; acc1 on {args.eval_n} held-out images. Exact sweep {exact_s:.1f} s.")
    cache: dict = {}
    lines = []
    for (seconds, table), fraction in zip(rounds, spent):
        used = table["images_used"]
        lines.append({"round": int(table["round"].max()), "images/unit": f"{used.min()}-{used.max()}",
                      "estimates": int(table["estimate"].sum()), "work": f"{fraction:.0%}",
                      "wall": f"{seconds / exact_s:.0%}", **compare(clip, exact, table, eval_task, cache)})
    print(pd.DataFrame(lines).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    verdict = target(lines, spent)
    print(verdict["line"])
    print(f"final anytime table == exact table, bit for bit: {same}; anytime wall {rounds[-1][0]:.1f} s = "
          f"{rounds[-1][0] / exact_s:.2f}x the exact sweep's (estimates and snapshots included)\n")
    return {"exact": exact, **verdict}


def summary(draws: list[dict]) -> str:
    """How many draws met the target (each plan, both), and the exact plans' pairwise Jaccard across draws."""
    met = {s: sum(d["met"][s] for d in draws) for s in ("uniform", "global")}
    both = sum(all(d["met"].values()) for d in draws)
    lines = [f"{len(draws)} calibration draws: target met on {both} (uniform plan: {met['uniform']}, "
             f"global plan: {met['global']})"]
    for strategy in ("uniform", "global"):
        removed = [{u.name for u in plan(d["exact"], Budget(keep=0.5, strategy=strategy, towers=("vision",))).removed}
                   for d in draws]
        pairs = [len(a & b) / len(a | b) for a, b in itertools.combinations(removed, 2)]
        lines.append(f"exact {strategy} keep-0.5 plans of two different draws: Jaccard mean {np.mean(pairs):.3f} "
                     f"(min {min(pairs):.3f}, max {max(pairs):.3f}) over {len(pairs)} pairs")
    return "\n".join(lines)


def target(lines: list[dict], spent: list[float]) -> dict:
    """The issue's target at the last round within 25% of the exact sweep's work, per plan: Jaccard >= 0.90 and
    the pruned model's acc1 within 0.01 of the exact plan's; {"line": what to print, "met": {plan: bool}}."""
    within = [(line, f) for line, f in zip(lines, spent) if f <= 0.25]
    if not within:
        return {"line": "no round ended within 25% of the exact sweep's work", "met": {"uniform": False, "global": False}}
    line, fraction = within[-1]
    gaps = {s: abs(line[f"acc1 {s}"] - line[f"acc1 {s} exact"]) for s in ("uniform", "global")}
    met = {s: bool(line[f"jaccard {s}"] >= 0.9 and gaps[s] <= 0.01 + 1e-9) for s in gaps}  # acc1: multiples of 1/n
    text = (f"target at <= 25% work (round {line['round']}, {fraction:.0%}): Jaccard uniform "
            f"{line['jaccard uniform']:.3f} / global {line['jaccard global']:.3f} (>= 0.90), pruned acc1 off by "
            f"{gaps['uniform']:.3f} / {gaps['global']:.3f} (<= 0.01): {'met' if all(met.values()) else 'MISSED'}")
    return {"line": text, "met": met}


def vit(args) -> None:
    import open_clip

    from mope.io import atomic_save_safetensors

    path = Path(tempfile.mkdtemp(prefix="mope-vit-")) / "ViT-B-32-random.safetensors"
    model = open_clip.create_model("ViT-B-32")
    atomic_save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    clip = mope.load_model(f"ViT-B-32:{path}", device="cpu")
    task = mope.load_task("shapes", n=args.n)
    units = len(enumerate_units(clip.model, args.vit_towers))
    first: list[float] = []
    scored, used = [0], [""]
    start, cpu = time.perf_counter(), time.process_time()

    def progress(done, total, eta, rows):
        scored[0] = len(rows)
        if len(rows) == units and not first:  # every unit has its first score
            first.append(time.perf_counter() - start)
            used[0] = used_span(pd.DataFrame(rows))

    def stop() -> bool:
        return bool(first) or time.perf_counter() - start > args.vit_limit

    try:
        score(clip, task, towers=args.vit_towers, metric=args.metric, baselines=(), cache=False, schedule="anytime",
              first_round=args.vit_first, first_table_seconds=args.vit_seconds, progress=progress, should_stop=stop)
    except Cancelled:
        pass
    round1 = (f"{args.vit_first} images per unit in round 1" if args.vit_first else
              f"round 1 sized to {args.vit_seconds:.0f} s")
    head = (f"random-init ViT-B-32, {' + '.join(args.vit_towers)} ({units} units: heads, neuron groups, layers), "
            f"{args.n} calibration images, {round1}, {torch.get_num_threads()} torch threads "
            f"(this process's CPU time: {time.process_time() - cpu:.0f} s):")
    if first:
        print(f"{head} first complete table after {first[0]:.0f} s ({first[0] / 60:.1f} min), {used[0]}")
    else:
        seconds = time.perf_counter() - start
        print(f"{head} stopped after {seconds:.0f} s with {scored[0]} of {units} units scored (no complete table)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--metric", default="acc1")
    ap.add_argument("--eval-n", type=int, default=500)
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[None],
                    help="demo: calibration draws (shapes seeds; default: the task's own, 1000), e.g. 1000,1001,1002")
    ap.add_argument("--first", type=int, default=None, help="demo: images per unit in round 1 (default: n/16)")
    ap.add_argument("--vit", action="store_true", help="also time the first complete table of a random ViT-B-32")
    ap.add_argument("--vit-only", action="store_true")
    ap.add_argument("--vit-first", type=int, default=None, help="ViT-B-32: images per unit in round 1 (no budget)")
    ap.add_argument("--vit-seconds", type=float, default=480, help="ViT-B-32: the first table's time budget")
    ap.add_argument("--vit-limit", type=float, default=900, help="seconds before the ViT-B-32 first round is stopped")
    ap.add_argument("--vit-towers", type=lambda s: s.split(","), default=["vision", "text"],
                    help="ViT-B-32: the towers whose units the first table covers")
    args = ap.parse_args()
    if not args.vit_only:
        demo(args)
    if args.vit or args.vit_only:
        vit(args)


if __name__ == "__main__":
    main()
