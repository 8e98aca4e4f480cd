"""How well a shapes CLIP recognizes shapes wherever and however large they are drawn.

Zero-shot acc1 (64-way colour×shape, 8-way shape, 8-way colour, template ensembling) and text
retrieval recall@5 (5 captions per image) on held-out shapes images, grid and free placement.

    python bench/robustness.py [--model demo] [--n 1000] [--seed 1000]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python bench/...

import argparse

import mope
from mope.data.shapes import PLACEMENTS
from mope.data.tasks import SHAPES_HELD_OUT_SEED

ROWS = (("colour×shape acc1", "target=colour_shape", "zeroshot", "acc1"),
        ("shape acc1", "target=shape", "zeroshot", "acc1"),
        ("colour acc1", "target=colour", "zeroshot", "acc1"),
        ("text retrieval R@5", "target=colour_shape", "retrieval", "text_retrieval_recall@5"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=SHAPES_HELD_OUT_SEED)
    args = p.parse_args()
    clip = mope.load_model(args.model, device="cpu")
    print(f"model {args.model}, {args.n} images, seed {args.seed}")
    print(f"{'metric':<22}" + "".join(f"{p:>10}" for p in PLACEMENTS))
    for label, option, kind, metric in ROWS:
        values = [mope.evaluate(clip, mope.load_task(f"shapes:{option},placement={placement},seed={args.seed}",
                                                     protocol=kind, n=args.n))[metric] for placement in PLACEMENTS]
        print(f"{label:<22}" + "".join(f"{v:>10.4f}" for v in values), flush=True)


if __name__ == "__main__":
    main()
