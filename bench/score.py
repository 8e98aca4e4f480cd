"""Naive vs fast MoPE scoring on the demo model, both towers, all unit kinds, in one run.

Prints both times, their ratio, the largest score difference, the ideal cost of the sweep (for every
unit: the layers it must re-run on its own tower × the measured time of one layer pass), and the
projected sweep cost for ViT-B-32 from per-layer timings of ViT-B-32-sized blocks on this machine.

    python bench/score.py [--n 256] [--metric loss] [--device cpu] [--data shapes]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python bench/...

import argparse
import time

import torch
from open_clip.transformer import ResidualAttentionBlock

import mope
from mope.data.tasks import image_batches
from mope.evaluation import task_texts
from mope.scoring import score
from mope.speed import median_seconds
from mope.units import KINDS, TOWERS, enumerate_units, tokens_of, tower_blocks


def layer_time(block: torch.nn.Module, x: torch.Tensor, attn_mask=None, repeats: int = 5) -> float:
    """Median seconds of one block forward on x (on x's device)."""
    return median_seconds(lambda: block(x, attn_mask=attn_mask), x.device, repeats)


def ideal_seconds(units, depth: dict[str, int], per_layer: dict[str, float]) -> float:
    return sum((depth[u.tower] - u.layer) * per_layer[u.tower] for u in units)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--metric", default="loss", help="loss shows float differences; acc1 also works")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default="shapes", help="calibration data (shapes: 64 classes, 320 prompts; "
                                                         "shapes:target=shape: 8 classes, 32 prompts)")
    args = parser.parse_args()
    clip = mope.load_model("demo", device=args.device)
    task = mope.load_task(args.data, n=args.n)
    model = clip.model

    t = time.perf_counter()
    fast = score(clip, task, metric=args.metric, baselines=(), cache=False)
    fast_s = time.perf_counter() - t
    t = time.perf_counter()
    naive = score(clip, task, metric=args.metric, impl="naive", baselines=(), cache=False)
    naive_s = time.perf_counter() - t

    images = torch.cat(list(image_batches(task, clip.preprocess))).to(clip.device)
    prompts = clip.tokenizer(task_texts(task)).to(clip.device)
    with torch.inference_mode():
        width = tower_blocks(model, "vision")[0].attn.embed_dim
        x_vision = torch.randn(len(images), tokens_of(model, "vision"), width, device=clip.device)
        x_text = model.token_embedding(prompts) + model.positional_embedding
    per_layer = {"vision": layer_time(tower_blocks(model, "vision")[0], x_vision),
                 "text": layer_time(tower_blocks(model, "text")[0], x_text, model.attn_mask)}
    depth = {t: len(tower_blocks(model, t)) for t in TOWERS}
    units = enumerate_units(model, TOWERS, KINDS)
    ideal = ideal_seconds(units, depth, per_layer)

    print(f"demo model, {len(units)} units (both towers, heads/neurons/layers), {args.n} calibration images "
          f"({args.data}, {len(prompts)} prompts), metric {args.metric}, device {clip.device}")
    print(f"naive  {naive_s:8.2f} s")
    print(f"fast   {fast_s:8.2f} s")
    print(f"speedup naive/fast              {naive_s / fast_s:6.2f}x")
    print(f"largest |fast - naive| score    {(fast.mope - naive.mope).abs().max():.3g}")
    print(f"one layer pass: vision {per_layer['vision'] * 1e3:.2f} ms, text {per_layer['text'] * 1e3:.2f} ms")
    print(f"ideal cost {ideal:.2f} s; fast / ideal = {fast_s / ideal:.2f}")
    if clip.device.type == "cuda":  # batching several ablations per pass pays off where compute is parallel
        t = time.perf_counter()
        score(clip, task, metric=args.metric, baselines=(), cache=False, batch_tokens=1)
        one_s = time.perf_counter() - t
        print(f"one ablation per pass {one_s:.2f} s vs batched {fast_s:.2f} s: batching gain {one_s / fast_s:.2f}x")

    # ViT-B-32: 12 layers each tower; vision width 768 on 50 tokens, text width 512 on 77 tokens;
    # 12 heads / 8 heads, neuron groups of 64 (48 / 32 per layer), one layer unit each.
    device = clip.device
    vit_b = {"vision": layer_time(ResidualAttentionBlock(768, 12).to(device).eval(),
                                  torch.randn(args.n, 50, 768, device=device), repeats=3),
             "text": layer_time(ResidualAttentionBlock(512, 8).to(device).eval(),
                                torch.randn(len(prompts), 77, 512, device=device),
                                torch.full((77, 77), float("-inf"), device=device).triu(1), repeats=3)}
    per_layer_units = {"vision": 12 + 48 + 1, "text": 8 + 32 + 1}
    projected = sum(per_layer_units[t] * (12 - layer) * vit_b[t] for t in TOWERS for layer in range(12))
    print(f"ViT-B-32 layer pass: vision {vit_b['vision']:.3f} s ({args.n} images), text {vit_b['text']:.3f} s "
          f"({len(prompts)} prompts)")
    print(f"ViT-B-32 projected fast sweep ({sum(per_layer_units.values()) * 12} units): {projected / 60:.1f} min "
          f"(ideal cost) on this device")


if __name__ == "__main__":
    main()
