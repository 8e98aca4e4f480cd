"""Real architectures: a random-init open_clip ViT-B-32 / ViT-B-16 / ViT-L-14 (open_clip's own config;
speed and memory do not depend on the weights), in one run:

- one layer pass per tower: a vision block on the calibration images' tokens, a text block on the prompts;
- the full MoPE sweep (both towers, heads + neuron groups + layers): measured on a GPU; on a CPU the vision
  tower's layer units are scored on --subset-n images, their time against their ideal cost (layers re-run ×
  measured layer time) gives the fast path's efficiency, and the full sweep is projected from its ideal
  cost at --n images — printed as "projected";
- the scoring peak memory for each --memory-n calibration set size, each in a fresh process: RSS high-water
  mark on a CPU, torch.cuda.max_memory_allocated on a GPU; the last vision layer alone is scored (every
  image still passes through both towers; the peak does not depend on how many units are scored), with
  score()'s chunk / max_memory knobs (--chunk, --max-memory; default automatic), against the README's memory
  formula (mope.scoring's estimate; --only memory prints these lines alone);
- the vision tower pruned to half its transformer FLOPs (bench/prune.py): throughput vs FLOP ratio;
- pruned == ablated: the largest |difference| of the image embeddings on a few images.

    python bench/arch.py --arch ViT-B-32 [--device cuda] [--n 256] [--memory-n 256,2048] [--subset-n 16]
                         [--only memory] [--chunk N | --max-memory GiB]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python bench/...

import argparse
import json
import resource
import subprocess
import time
from contextlib import nullcontext

import open_clip
import torch
from prune import compare, random_clip

import mope
from mope.ablation import ablated
from mope.evaluation import task_texts
from mope.scoring import MIN_ROWS, auto_chunk, pass_bytes_per_token, pass_tokens, score
from mope.settings import default_device
from mope.speed import device_name, median_seconds
from mope.units import KINDS, TOWERS, enumerate_units, tokens_of, tower_blocks

ARCHS = ("ViT-B-32", "ViT-B-16", "ViT-L-14")  # the benchmark's; any open_clip ViT name runs (the dry run: ViT-S-32-alt)


def autocast_for(device: torch.device, precision: str):
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def layer_seconds(clip, n_images: int, prompts: int, autocast) -> dict[str, float]:
    """Median time of one block forward per tower: n_images images' tokens, and the task's prompts."""
    model, device, times = clip.model, clip.device, {}
    for tower, n in (("vision", n_images), ("text", prompts)):
        block = tower_blocks(model, tower)[0]
        x = torch.randn(n, tokens_of(model, tower), block.attn.embed_dim, device=device)
        mask = model.attn_mask if tower == "text" else None
        with autocast():
            times[tower] = median_seconds(lambda b=block, x=x, m=mask: b(x, attn_mask=m), device, repeats=3)
    return times


def ideal_seconds(units, depth: dict[str, int], per_layer: dict[str, float]) -> float:
    """One unablated pass through both towers, then the layers each unit must re-run on its own tower,
    at the measured time of one layer pass."""
    base = sum(depth[t] * per_layer[t] for t in TOWERS)
    return base + sum((depth[u.tower] - u.layer) * per_layer[u.tower] for u in units)


def sweep(clip, args, per_layer: dict[str, float], autocast) -> None:
    model = clip.model
    depth = {t: len(tower_blocks(model, t)) for t in TOWERS}
    units = enumerate_units(model, TOWERS, KINDS)
    ideal = ideal_seconds(units, depth, per_layer)
    kw = {"baselines": (), "cache": False, "precision": args.precision, "metric": "loss"}
    if clip.device.type == "cuda":
        t = time.perf_counter()
        score(clip, mope.load_task(args.data, n=args.n), **kw)
        measured = time.perf_counter() - t
        print(f"full sweep ({len(units)} units, {args.n} images, {args.precision}): {measured:.1f} s measured "
              f"(ideal cost {ideal:.1f} s; measured / ideal {measured / ideal:.2f})")
        return
    subset = enumerate_units(model, ["vision"], ["layer"])
    task = mope.load_task(args.data, n=args.subset_n)
    sub_layer = layer_seconds(clip, args.subset_n, len(task_texts(task)), autocast)
    t = time.perf_counter()
    score(clip, task, towers=["vision"], units=["layer"], **kw)
    measured = time.perf_counter() - t
    efficiency = measured / ideal_seconds(subset, depth, sub_layer)
    print(f"subset: {len(subset)} vision layer units, {args.subset_n} images: {measured:.1f} s measured, "
          f"{efficiency:.2f} x its ideal cost (both towers' unablated pass + the layers re-run)")
    print(f"full sweep ({len(units)} units, {args.n} images, {args.precision}): {ideal * efficiency / 60:.1f} min "
          f"PROJECTED (ideal cost {ideal / 60:.1f} min x {efficiency:.2f})")


def memory_child(args) -> None:
    """In a fresh process: score the last vision layer on N images; print the peak memory, the seconds and the
    memory formula's terms as JSON."""
    device = torch.device(default_device(args.device))
    clip = random_clip(args.arch, device)
    task = mope.load_task(args.data, n=args.memory_child)
    depth = len(tower_blocks(clip.model, "vision"))
    before = _peak_mb(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start, passed = time.perf_counter(), [0]

    def trace(module, inputs, output):  # a line per image chunk through the tower: a stopped run shows its peak so far
        passed[0] += len(inputs[0])
        print(f"  {time.perf_counter() - start:7.0f} s: {passed[0]} image rows through the vision tower, peak "
              f"{_peak_mb(device) / 1024:.2f} GiB", file=sys.stderr, flush=True)

    hook = clip.model.visual.register_forward_hook(trace)
    score(clip, task, towers=["vision"], units=["layer"], shard=(depth - 1, depth), baselines=(), cache=False,
          precision=args.precision, metric="loss", chunk=args.chunk, max_memory=args.max_memory)
    seconds = time.perf_counter() - start
    hook.remove()
    print(json.dumps({"before_mb": before, "peak_mb": _peak_mb(device), "seconds": seconds,
                      **formula_terms(clip, task, args.chunk, args.max_memory)}))


def formula_terms(clip, task, chunk: int | None, max_memory: float | None) -> dict:
    """The README's memory formula (Python API, scoring) for this run, in bytes, term by term: the vision tower,
    one unit of its last layer, a zero-shot task. One chunk holding the whole set keeps every layer's input."""
    model = clip.model
    tokens, width = tokens_of(model, "vision"), tower_blocks(model, "vision")[0].attn.embed_dim
    batch_tokens = pass_tokens(clip, ["vision"], None, max_memory)  # what score() on the vision tower uses
    rows = max(MIN_ROWS, min(chunk or auto_chunk(model, "vision", batch_tokens), len(task)))
    layers = len(tower_blocks(model, "vision")) if rows >= len(task) else 1
    size = model.visual.image_size
    pixels = size[0] * size[1] if isinstance(size, (tuple, list)) else size * size
    dim = model.visual.output_dim
    return {"chunk": rows, "batch_tokens": batch_tokens,
            "pass": rows * tokens * pass_bytes_per_token(model, "vision"),  # one unit: the pass holds one chunk
            "hidden": 4 * layers * rows * tokens * width, "pixels": 4 * rows * 3 * pixels,
            "embeddings": 4 * (len(task) + len(task_texts(task))) * dim, "per_image": 4 * len(task)}


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def memory(args) -> None:
    gpu = torch.device(default_device(args.device)).type == "cuda"
    what = "torch.cuda.max_memory_allocated" if gpu else "peak RSS of the process"
    knob = (f"--chunk {args.chunk}" if args.chunk else "") + (f" --max-memory {args.max_memory}" if args.max_memory
                                                              else "")
    print(f"scoring peak memory ({what}; last vision layer scored, {args.precision}; score() streams the images "
          f"in chunks: {knob.strip() or 'automatic chunk'}; formula: the README's, in GiB)")
    for n in [int(x) for x in args.memory_n.split(",") if x]:
        cmd = [sys.executable, __file__, "--arch", args.arch, "--memory-child", str(n), "--precision", args.precision,
               "--data", args.data]
        cmd += [f for flag, value in (("--device", args.device), ("--chunk", args.chunk),
                                      ("--max-memory", args.max_memory)) if value for f in (flag, str(value))]
        print(f"  {n:5d} images, the scoring child's progress (stderr):", flush=True)
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)  # stderr passes through
        if out.returncode:
            print(f"  {n:5d} images: failed (exit status {out.returncode}; its stderr above)")
            continue
        m = json.loads(out.stdout.strip().splitlines()[-1])
        terms = {k: m[k] / 2**30 for k in ("pass", "hidden", "pixels", "embeddings", "per_image")}
        print(f"  {n:5d} images: peak {m['peak_mb'] / 1024:.2f} GiB (model and data loaded: {m['before_mb'] / 1024:.2f} "
              f"GiB, scoring added {(m['peak_mb'] - m['before_mb']) / 1024:.2f}), formula {sum(terms.values()):.2f} = "
              + " + ".join(f"{k} {v:.2f}" for k, v in terms.items())
              + f", chunk {m['chunk']}, batch_tokens {m['batch_tokens']}, {m['seconds']:.0f} s")  # no ';': gpu.sh splits there


def pruned_equals_ablated(clip, result: dict, n: int = 4) -> float:
    size = clip.model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    x = torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(0)).to(clip.device)
    p = result["plan"]
    with torch.inference_mode():
        got = result["pruned"].model.encode_image(x)
        with ablated(clip.model, p.removed, p.group_sizes):
            want = clip.model.encode_image(x)
    return (got - want).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="ViT-B-32", help=f"{', '.join(ARCHS)} or another open_clip ViT config name")
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default=None, help="fp32 or bf16 (default: bf16 on a GPU, fp32 on a CPU)")
    parser.add_argument("--data", default="shapes", help="calibration data spec (its prompts set the text cost)")
    parser.add_argument("--n", type=int, default=256, help="calibration images of the full sweep")
    parser.add_argument("--subset-n", type=int, default=16, help="CPU: images of the measured subset")
    parser.add_argument("--memory-n", default="256,2048", help="calibration set sizes for the peak memory lines")
    parser.add_argument("--batch", type=int, default=None, help="throughput batch (default: 256 on a GPU, 32 on a CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=None, help="score()'s chunk for the memory lines (default: automatic)")
    parser.add_argument("--max-memory", type=float, default=None, help="score()'s max_memory (GiB) for the memory lines")
    parser.add_argument("--only", choices=("all", "memory"), default="all", help="memory: the peak memory lines alone")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arch not in open_clip.list_models():
        parser.error(f"--arch {args.arch} is not an open_clip model config ({', '.join(ARCHS)} …)")
    device = torch.device(default_device(args.device))
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    if args.memory_child:
        memory_child(args)
        return
    if args.only == "memory":
        print(f"{args.arch} (random init) on {device_name(device)}")
        memory(args)
        return
    autocast = autocast_for(device, args.precision)
    clip = random_clip(args.arch, device)
    params = sum(p.numel() for p in clip.model.parameters()) / 1e6
    print(f"{args.arch} (random init, {params:.1f}M params) on {device_name(device)}, {args.precision}")
    prompts = len(task_texts(mope.load_task(args.data, n=8)))
    per_layer = layer_seconds(clip, args.n, prompts, autocast)
    print(f"one layer pass: vision {per_layer['vision'] * 1e3:.1f} ms ({args.n} images), "
          f"text {per_layer['text'] * 1e3:.1f} ms ({prompts} prompts of {args.data})")
    sweep(clip, args, per_layer, autocast)
    memory(args)
    result = compare(clip, args.batch or (256 if device.type == "cuda" else 32), args.repeats, autocast)
    print(f"pruned == ablated: largest |difference| of {4} image embeddings {pruned_equals_ablated(clip, result):.2e}")


if __name__ == "__main__":
    main()
