"""Measured size and speed of each tower: params, GFLOPs, latency and throughput."""
from __future__ import annotations

import time

import pandas as pd
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .clip import Clip
from .units import TOWERS, tower_summary


def tower_inputs(clip: Clip, tower: str, batch: int) -> torch.Tensor:
    if tower == "vision":
        size = clip.model.visual.image_size
        size = size if isinstance(size, (tuple, list)) else (size, size)
        return torch.randn(batch, 3, *size, device=clip.device)
    return clip.tokenizer(["a photo of a small red circle in the top left corner"] * batch).to(clip.device)


def encode(clip: Clip, tower: str, x: torch.Tensor) -> torch.Tensor:
    return clip.model.encode_image(x) if tower == "vision" else clip.model.encode_text(x)


def gflops_per_sample(clip: Clip, tower: str) -> float:
    """FLOPs of one sample through the tower, counted by torch's FlopCounterMode."""
    counter = FlopCounterMode(display=False)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel is invisible to the counter
    try:  # the math attention kernel is plain matmuls, which the counter sees on every device
        with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), counter:
            encode(clip, tower, tower_inputs(clip, tower, 1))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops() / 1e9


def latency_seconds(clip: Clip, tower: str, batch: int, repeats: int = 5) -> float:
    """Median wall time of one batch (after a warm-up run)."""
    x = tower_inputs(clip, tower, batch)
    times = []
    with torch.inference_mode():
        encode(clip, tower, x)
        for _ in range(repeats):
            if clip.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            encode(clip, tower, x)
            if clip.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def speed_table(clip: Clip, batches=(1, 8, 32), repeats: int = 5, towers=TOWERS) -> pd.DataFrame:
    rows = []
    for tower in towers:
        params, gflops = tower_summary(clip.model, tower)["params"], gflops_per_sample(clip, tower)
        for b in batches:
            s = latency_seconds(clip, tower, b, repeats)
            rows.append({"tower": tower, "params (M)": params / 1e6, "GFLOPs/sample": gflops, "batch": b,
                         "latency (ms)": s * 1e3, "throughput (/s)": b / s})
    return pd.DataFrame(rows)
