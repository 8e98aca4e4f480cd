"""Distillation throughput with and without DataLoader workers, in one run: the demo teacher and its
vision tower pruned to half its FLOPs (uniform heads + neuron groups by magnitude), shapes data, the same
settings for every worker count; the runs alternate (--rounds) so a busier moment of a shared machine hits
them all. Per worker count: steps/s, images/s and the share of step time spent waiting for data, from
distill's own per-step timing, after --warmup steps.

    python bench/data.py [--device cuda] [--batch 64] [--steps 40] [--workers 0,1] [--rounds 2]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python bench/...

import argparse
import statistics
import tempfile

import mope
from mope.distill import DistillConfig, distill
from mope.plan import Budget, plan
from mope.scoring import unit_table
from mope.settings import default_device
from mope.speed import device_name


def one_run(teacher, student_plan, args, workers: int) -> dict:
    times = []
    config = DistillConfig(steps=args.steps, batch_size=args.batch, workers=workers, checkpoint_every=10**9,
                           eval_every=10**9)

    def progress(step, total, eta, info):
        if info.get("time"):
            times.append(info["time"])

    with tempfile.TemporaryDirectory() as out:
        distill(teacher, mope.prune(teacher, student_plan), "shapes", config, out, progress=progress)
    kept = times[args.warmup:]
    data, compute = sum(t["data_s"] for t in kept), sum(t["compute_s"] for t in kept)
    return {"steps_s": len(kept) / (data + compute), "wait": data / (data + compute)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", default="0,1", help="worker counts to compare")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    device = default_device(args.device)
    teacher = mope.load_model("demo", device=device)
    student_plan = plan(unit_table(teacher, towers=["vision"], units=["head", "neurons"]),
                        Budget(keep=0.5, measure="flops", towers=("vision",)), by="magnitude")
    counts = [int(w) for w in args.workers.split(",")]
    runs: dict[int, list[dict]] = {w: [] for w in counts}
    for _ in range(args.rounds):
        for w in counts:
            runs[w].append(one_run(teacher, student_plan, args, w))
    print(f"distillation, demo teacher -> vision 50% student, shapes, batch {args.batch}, {args.steps} steps "
          f"({args.warmup} warm-up) x {args.rounds} rounds, on {device_name(device)}")
    base = statistics.median(r["steps_s"] for r in runs[counts[0]])
    for w in counts:
        steps_s = statistics.median(r["steps_s"] for r in runs[w])
        wait = statistics.median(r["wait"] for r in runs[w])
        print(f"workers {w}: {steps_s:6.2f} steps/s  {steps_s * args.batch:8.1f} images/s  data wait {wait:5.1%} "
              f"of step time  ({steps_s / base:.2f}x workers {counts[0]})")


if __name__ == "__main__":
    main()
