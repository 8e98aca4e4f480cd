"""Training throughput with and without DataLoader workers, in one run, for each training loop asked for:
`distill` (the demo teacher and its vision tower pruned to half its FLOPs, uniform heads + neuron groups by
magnitude, shapes data) and `train-demo` (the demo CLIP's recipe, grid stage, from scratch). The same
settings for every worker count; the runs alternate (--rounds) so a busier moment of a shared machine hits
them all. Per worker count: steps/s, images/s and the share of step time spent waiting for data, from
the loop's own per-step timing, after --warmup steps.

    python bench/data.py [--loops distill,train-demo] [--device cuda] [--batch 64] [--steps 40] [--workers 0,1] [--rounds 2]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python bench/...

import argparse
import statistics
import tempfile

import mope
from mope.demo import train_demo
from mope.distill import DistillConfig, distill
from mope.planning import Budget, plan
from mope.scoring import unit_table
from mope.settings import default_device
from mope.speed import device_name


def distill_run(teacher, student_plan, args, workers: int) -> dict:
    times = []
    config = DistillConfig(steps=args.steps, batch_size=args.batch, workers=workers, checkpoint_every=10**9,
                           eval_every=10**9)
    with tempfile.TemporaryDirectory() as out:
        distill(teacher, mope.prune(teacher, student_plan), "shapes", config, out, progress=_timer(times))
    return _rates(times, args)


def train_demo_run(args, workers: int) -> dict:
    """train-demo's grid stage from scratch (the demo CLIP's config), --steps steps at --batch."""
    times = []
    with tempfile.TemporaryDirectory() as out:
        train_demo(out=Path(out), steps=args.steps, batch_size=args.batch, eval_every=10**9, checkpoint_every=10**9,
                   log=lambda line: None, workers=workers, progress=_timer(times))
    return _rates(times, args)


def _timer(times: list):
    def progress(step, total, eta, info):
        if info.get("time"):
            times.append(info["time"])
    return progress


def _rates(times: list[dict], args) -> dict:
    kept = times[args.warmup:]
    data, compute = sum(t["data_s"] for t in kept), sum(t["compute_s"] for t in kept)
    return {"steps_s": len(kept) / (data + compute), "wait": data / (data + compute)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loops", default="distill", help="distill, train-demo or both (comma-separated)")
    parser.add_argument("--device", default=None, help="distill's device (train-demo runs on the CPU)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", default="0,1", help="worker counts to compare")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    loops = {"distill": measure_distill, "train-demo": measure_train_demo}
    for loop in args.loops.split(","):
        if loop not in loops:
            raise SystemExit(f"error: unknown loop {loop!r}: use distill or train-demo")
        report(*loops[loop](counts, args), counts, args)


def measure_distill(counts: list[int], args) -> tuple[str, dict]:
    device = default_device(args.device)
    teacher = mope.load_model("demo", device=device)
    student_plan = plan(unit_table(teacher, towers=["vision"], units=["head", "neurons"]),
                        Budget(keep=0.5, measure="flops", towers=("vision",)), by="magnitude")
    runs = compare(counts, args.rounds, lambda w: distill_run(teacher, student_plan, args, w))
    return f"distillation, demo teacher -> vision 50% student, shapes, on {device_name(device)}", runs


def measure_train_demo(counts: list[int], args) -> tuple[str, dict]:
    runs = compare(counts, args.rounds, lambda w: train_demo_run(args, w))
    return f"train-demo, the demo CLIP's grid stage from scratch, on {device_name(default_device('cpu'))}", runs


def compare(counts: list[int], rounds: int, run) -> dict[int, list[dict]]:
    """run(workers) for each worker count, alternating, `rounds` times."""
    runs: dict[int, list[dict]] = {w: [] for w in counts}
    for _ in range(rounds):
        for w in counts:
            runs[w].append(run(w))
    return runs


def report(title: str, runs: dict[int, list[dict]], counts: list[int], args) -> None:
    print(f"{title}, batch {args.batch}, {args.steps} steps ({args.warmup} warm-up) x {args.rounds} rounds")
    base = statistics.median(r["steps_s"] for r in runs[counts[0]])
    for w in counts:
        steps_s = statistics.median(r["steps_s"] for r in runs[w])
        wait = statistics.median(r["wait"] for r in runs[w])
        print(f"workers {w}: {steps_s:6.2f} steps/s  {steps_s * args.batch:8.1f} images/s  data wait {wait:5.1%} "
              f"of step time  ({steps_s / base:.2f}x workers {counts[0]})", flush=True)


if __name__ == "__main__":
    main()
