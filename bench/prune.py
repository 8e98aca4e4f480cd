"""Dense vs pruned speed, in one run: the demo model and a random-init ViT-B-32, each with its vision
tower pruned to 50% of its transformer FLOPs (uniform heads + neuron groups, ranked by magnitude —
the ranking does not change speed). Prints params, GFLOPs (counted by torch), throughput at batch 32
and the speedup against the FLOP ratio (target: speedup ≥ 0.8 × FLOP ratio).

    python bench/prune.py [--batch 32] [--repeats 5] [--device cpu]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python bench/...

import argparse
from contextlib import nullcontext

import open_clip
import torch

import mope
from mope.clip import Clip
from mope.planning import Budget, plan
from mope.scoring import unit_table
from mope.settings import default_device
from mope.speed import gflops_per_sample, latency_seconds
from mope.surgery import prune
from mope.units import tower_summary


def random_clip(arch: str, device) -> Clip:
    """A random-init open_clip architecture (its own config): real shapes, speed and memory, noise scores."""
    model, _, preprocess = open_clip.create_model_and_transforms(arch, device=device)
    model.eval()
    return Clip(model, open_clip.get_tokenizer(arch), preprocess, f"{arch} (random init)", arch,
                torch.device(device), {"model_cfg": open_clip.get_model_config(arch)})


def compare(clip: Clip, batch: int, repeats: int, autocast=nullcontext) -> dict:
    """Vision tower pruned to half its transformer FLOPs: prints and returns the plan, the pruned model,
    GFLOPs and throughput before and after (timed under `autocast`)."""
    p = plan(unit_table(clip, towers=["vision"], units=["head", "neurons"]),
             Budget(keep=0.5, measure="flops", towers=("vision",)), by="magnitude")
    pruned = prune(clip, p)
    dense_g, pruned_g = gflops_per_sample(clip, "vision"), gflops_per_sample(pruned, "vision")
    with autocast():
        dense_t = latency_seconds(clip, "vision", batch, repeats)
        pruned_t = latency_seconds(pruned, "vision", batch, repeats)
    flop_ratio, speedup = dense_g / pruned_g, dense_t / pruned_t
    s = p.sizes["vision"]
    print(f"{clip.name}: {p.notes[0] if p.notes else ''}")
    print(f"  transformer FLOPs kept {s['flops_after'] / s['flops_before']:.3f}; image tower params "
          f"{tower_summary(clip.model, 'vision')['params'] / 1e6:.2f}M -> {tower_summary(pruned.model, 'vision')['params'] / 1e6:.2f}M")
    print(f"  image tower GFLOPs/image {dense_g:.4f} -> {pruned_g:.4f} (ratio {flop_ratio:.2f}x)")
    print(f"  batch {batch}: {batch / dense_t:.1f} -> {batch / pruned_t:.1f} images/s (speedup {speedup:.2f}x)")
    print(f"  speedup / FLOP ratio = {speedup / flop_ratio:.2f} (target >= 0.8)")
    return {"plan": p, "pruned": pruned, "flop_ratio": flop_ratio, "speedup": speedup,
            "dense_images_s": batch / dense_t, "pruned_images_s": batch / pruned_t}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = default_device(args.device)
    compare(mope.load_model("demo", device=device), args.batch, args.repeats)
    compare(random_clip("ViT-B-32", device), args.batch, args.repeats)


if __name__ == "__main__":
    main()
