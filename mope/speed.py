"""Measured size and speed of each tower: params, GFLOPs, latency and throughput."""
from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from .blocks import with_attention
from .clip import Clip
from .errors import MopeError
from .rules import arguments
from .units import TOWERS, split_qkv, tower_summary


def tower_inputs(clip: Clip, tower: str, batch: int) -> torch.Tensor:
    if tower == "vision":
        size = clip.model.visual.image_size
        size = size if isinstance(size, (tuple, list)) else (size, size)
        return torch.randn(batch, 3, *size, device=clip.device)
    return clip.tokenizer(["a photo of a small red circle in the top left corner"] * batch).to(clip.device)


def encode(clip: Clip, tower: str, x: torch.Tensor) -> torch.Tensor:
    return clip.model.encode_image(x) if tower == "vision" else clip.model.encode_text(x)


def gflops_per_sample(clip: Clip, tower: str) -> float:
    """FLOPs of one sample through the tower, counted by torch's FlopCounterMode.

    The fused attention kernels are invisible to the counter, so the count runs on a twin of the model
    whose attentions are plain matmuls (`_CountedAttention`); no process-wide switch is flipped, and
    threads using the model meanwhile are unaffected.
    """
    counted = replace(clip, model=with_attention(clip.model, _CountedAttention))
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        encode(counted, tower, tower_inputs(clip, tower, 1))
    return counter.get_total_flops() / 1e9


class _CountedAttention(torch.nn.Module):
    """An attention computed as plain matmuls (what the FLOP counter sees), for counting only."""

    def __init__(self, attn: torch.nn.Module):
        super().__init__()
        self.attn = attn

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None):
        attn, (b, s, _) = self.attn, query.shape
        heads, hd = attn.num_heads, attn.head_dim
        if heads == 0:
            return attn.out_proj.bias.expand(b, s, attn.embed_dim), None
        q, k, v = split_qkv(F.linear(query, attn.in_proj_weight, attn.in_proj_bias), heads, hd)
        logits = q @ k.transpose(-1, -2) / hd ** 0.5
        if attn_mask is not None:
            logits = logits + attn_mask
        out = logits.softmax(-1) @ v
        return attn.out_proj(out.transpose(1, 2).reshape(b, s, heads * hd)), None


_clock = time.perf_counter  # the timer interleaved_latency reads (a seam for its test)


def device_name(device: torch.device) -> str:
    """The device in words: the GPU's name, or the CPU's model and the threads torch uses."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    return f"cpu ({names[0] if names else 'unknown model'}, {torch.get_num_threads()} threads)"


def interleaved_latency(clips: Mapping[str, Clip], tower: str = "vision", batch: int = 1, repeats: int = 7,
                        warmup: int = 1) -> pd.DataFrame:
    """Latency of several models timed back to back on one batch and one device, interleaved: every round
    runs each model once (the order rotated each round, so none always goes first) and each model's
    median over the rounds is reported, so a slower or busier moment of a shared machine hits them all.
    One row per model: median / min / max (ms); attrs["device"] names the device."""
    arguments("interleaved_latency", batch=batch, repeats=repeats, warmup=warmup)
    names = list(clips)
    if not names:
        raise MopeError("choose at least one model to time")
    devices = {clips[n].device for n in names}
    if len(devices) > 1:
        raise MopeError(f"the models sit on different devices ({', '.join(map(str, devices))}): load them on one")
    inputs = _shared_inputs(clips, tower, batch)
    times = {n: [] for n in names}
    device = devices.pop()
    with torch.inference_mode():
        for r in range(warmup + repeats):
            for n in names[r % len(names):] + names[:r % len(names)]:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t = _clock()
                encode(clips[n], tower, inputs[n])
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if r >= warmup:
                    times[n].append(_clock() - t)
    df = pd.DataFrame([{"model": n, "tower": tower, "batch": batch, "median (ms)": statistics.median(t) * 1e3,
                        "min (ms)": min(t) * 1e3, "max (ms)": max(t) * 1e3, "repeats": repeats} for n, t in times.items()])
    df.attrs["device"] = device_name(device)
    return df


def _shared_inputs(clips: Mapping[str, Clip], tower: str, batch: int) -> dict[str, torch.Tensor]:
    """The same batch for every model: one image tensor, or one prompt through each model's tokenizer."""
    first = next(iter(clips.values()))
    if tower == "text":
        return {n: tower_inputs(c, tower, batch) for n, c in clips.items()}
    x = tower_inputs(first, tower, batch)
    for n, c in clips.items():
        if c.model.visual.image_size != first.model.visual.image_size:
            raise MopeError(f"{n} takes another image size than {first.name}: time models of one architecture")
    return {n: x for n in clips}


def latency_seconds(clip: Clip, tower: str, batch: int, repeats: int = 5) -> float:
    """Median wall time of one batch (after a warm-up run)."""
    x = tower_inputs(clip, tower, batch)
    return median_seconds(lambda: encode(clip, tower, x), clip.device, repeats)


def median_seconds(run, device: torch.device | str, repeats: int = 5) -> float:
    """Median wall time of run() under inference mode, after a warm-up call; waits for the GPU on CUDA."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        run()
        for _ in range(repeats):
            sync()
            t = time.perf_counter()
            run()
            sync()
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
