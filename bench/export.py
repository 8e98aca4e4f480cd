"""onnxruntime vs torch on the CPU, side by side in one run: the demo model's image tower pruned at keep 0.5
(vision, uniform — the paper's layout — and global, whose layers keep different numbers of heads), exported
with `mope.export`, then timed at batch 32 with the two runtimes taking turns on the same input and the same
number of threads (target: onnxruntime ≥ torch), at 1 thread and at every core. Units are ranked by magnitude
(uniform) and by the seeded random baseline (global: it spreads the cuts over heads and neurons, so layers
keep uneven head counts): the ranking changes which units go, not the speed.

    python bench/export.py [--batch 32] [--repeats 20] [--threads 1,2]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python bench/...

import argparse
import statistics
import tempfile
import time

import onnxruntime as ort
import torch

import mope
from mope.export import export
from mope.planning import Budget, plan
from mope.scoring import unit_table
from mope.units import tower_summary

RANKING = {"uniform": "magnitude", "global": "random"}


def turns(torch_run, ort_run, repeats: int) -> tuple[float, float]:
    """Median seconds of each, the two taking turns (after one warm-up each), so load hits both alike."""
    torch_run(), ort_run()
    t_torch, t_ort = [], []
    for _ in range(repeats):
        for run, times in ((torch_run, t_torch), (ort_run, t_ort)):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    return statistics.median(t_torch), statistics.median(t_ort)


def compare(clip, strategy: str, batch: int, repeats: int, threads: list[int], folder: Path) -> None:
    p = plan(unit_table(clip, towers=["vision"], units=["head", "neurons"]),
             Budget(keep=0.5, strategy=strategy, towers=("vision",)), by=RANKING[strategy])
    pruned = mope.prune(clip, p)
    meta = export(pruned, folder / strategy)
    summary = tower_summary(pruned.model, "vision")
    print(f"demo, vision keep 0.5 {strategy} by {RANKING[strategy]}: heads per layer {summary['heads']}, image "
          f"tower {summary['params'] / 1e6:.2f}M params; max |onnxruntime - torch| {meta['max_abs_diff']['vision']:.1e}")
    for n in threads:
        time_both(pruned, folder / strategy / "image.onnx", meta, batch, repeats, n)


def time_both(pruned, path: Path, meta: dict, batch: int, repeats: int, threads: int) -> None:
    torch.set_num_threads(threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = torch.randn(batch, 3, *meta["inputs"]["vision"]["shape"][2:], generator=torch.Generator().manual_seed(0))
    feed = {"image": x.numpy()}

    def torch_run():
        with torch.inference_mode():
            pruned.model.encode_image(x)

    s_torch, s_ort = turns(torch_run, lambda: session.run(None, feed), repeats)
    print(f"  batch {batch}, {threads} threads, median of {repeats}: torch {batch / s_torch:.1f} images/s, "
          f"onnxruntime {batch / s_ort:.1f} images/s (onnxruntime / torch = {s_torch / s_ort:.2f}x; target >= 1)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", default=f"1,{torch.get_num_threads()}", help="comma list of thread counts")
    args = parser.parse_args()
    threads = sorted({int(n) for n in args.threads.split(",")})
    clip = mope.load_model("demo", device="cpu")
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, CPU only")
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in ("uniform", "global"):
            compare(clip, strategy, args.batch, args.repeats, threads, Path(tmp))


if __name__ == "__main__":
    main()
