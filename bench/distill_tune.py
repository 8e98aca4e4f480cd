"""Which distillation settings recover the most in a short, fixed time: one student per variant.

The demo's vision tower pruned to 50% by MoPE (acc1 on 256 calibration images, seed 2000), distilled
for --seconds per variant (lr 1e-3, batch 64, warmup 20, otherwise DistillConfig's defaults as
overridden below), then colour×shape acc1 on 500 held-out images. Each line prints as it finishes.

    python bench/distill_tune.py [--seconds 120] [VARIANT ...]   (default: every variant)
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python bench/...

import argparse
import tempfile
import time

import mope
from mope.distill import DistillConfig, distill
from mope.planning import Budget
from mope.scoring import score

VARIANTS = {"hidden 1.0": {"hidden": 1.0}, "hidden 1.0 + contrastive": {"hidden": 1.0, "contrastive": 1.0},
            "hidden 1.0, temperature 0.01": {"hidden": 1.0, "temperature": 0.01},
            "hidden 1.0, lr 2e-3": {"hidden": 1.0, "lr": 2e-3}, "hidden 0": {"hidden": 0.0},
            "hidden 0 + contrastive": {"hidden": 0.0, "contrastive": 1.0}, "hidden 0.1": {"hidden": 0.1}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("variants", nargs="*", default=list(VARIANTS), help=", ".join(VARIANTS))
    args = parser.parse_args()
    teacher = mope.load_model("demo", device="cpu")
    held_out = mope.load_task("shapes", n=500, seed=1000)
    scores = score(teacher, mope.load_task("shapes", n=256, seed=2000), towers=["vision"],
                   units=["head", "neurons"], metric="acc1")
    plan = mope.plan(scores, Budget(keep=0.5, towers=("vision",)))
    for name in args.variants:
        config = DistillConfig(**{"steps": 10**6, "batch_size": 64, "lr": 1e-3, "warmup": 20, "eval_every": 10**9,
                                  "checkpoint_every": 10**9, **VARIANTS[name]})
        deadline = time.time() + args.seconds
        with tempfile.TemporaryDirectory() as out:
            student = distill(teacher, mope.prune(teacher, plan), "shapes", config, out,
                              should_stop=lambda deadline=deadline: time.time() > deadline)
        print(f"{name:30s} {student.info['distill']['steps_done']:4d} steps  acc1 "
              f"{mope.evaluate(student, held_out)['acc1']:.3f}", flush=True)


if __name__ == "__main__":
    main()
