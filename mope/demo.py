"""The shipped demo CLIP: its config and the recipe that trains it on the shapes world."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import open_clip
import torch
from open_clip_train.scheduler import cosine_lr
from safetensors.torch import load_file

from .data import shapes
from .data.streams import BatchLoader, StepBatches, StepClock, dead_worker, resolve_workers
from .errors import MopeError
from .io import atomic_save_safetensors, atomic_torch_save, atomic_write_json
from .models import DEMO_DIR
from .progress import TimeLeft

DEMO_CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 6, "width": 160, "patch_size": 16, "head_width": 32, "mlp_ratio": 4},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}
MEAN = open_clip.OPENAI_DATASET_MEAN
STD = open_clip.OPENAI_DATASET_STD


def images_to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) at the model's resolution → normalized float (N, 3, H, W).

    Equal to the model's open_clip preprocess for images already at its size (tested).
    """
    x = images.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


class AttributeHeads(torch.nn.Module):
    """Linear probes predicting every shapes attribute from an embedding; used only while training.

    Contrastive training alone learns colour at once and then sits on a long plateau before shape
    (both towers must start telling shapes apart together). Supervised probes on both towers'
    embeddings break that symmetry; they are dropped after training, the shipped model is a plain CLIP.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.heads = torch.nn.ModuleDict({a: torch.nn.Linear(dim, len(shapes.attribute_names(a)))
                                          for a in shapes.ATTRIBUTES})

    def loss(self, features: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        terms = [torch.nn.functional.cross_entropy(head(features), labels[a], ignore_index=-100)
                 for a, head in self.heads.items() if (labels[a] >= 0).any()]
        return torch.stack(terms).mean()


# One stage from scratch on the free world (every 5th batch on the grid, so both placements are seen).
RECIPE = {"steps": 8500, "batch_size": 128, "lr": 1e-3, "seed": 0, "placement": "free", "grid_every": 5}
STATE_FILE = "train-state.pt"  # the resumable checkpoint: weights, probes, optimizer, step, RNG


def train_demo(out: Path = DEMO_DIR, steps: int = RECIPE["steps"], batch_size: int = RECIPE["batch_size"],
               lr: float = RECIPE["lr"], seed: int = RECIPE["seed"], placement: str = RECIPE["placement"],
               grid_every: int = RECIPE["grid_every"], eval_every: int = 500, checkpoint_every: int = 100,
               aux_weight: float = 1.0, log=print, log_every: int = 25, resume: bool = False, config: dict = DEMO_CONFIG,
               init: Path | None = None, freeze_text: bool = False, workers: int | None = None,
               progress: Callable | None = None) -> dict:
    """Train the demo CLIP from scratch or from init's weights (or resume from out/train-state.pt).

    freeze_text keeps the text tower as it is (only the image tower, its probes and the logit
    scale learn), which makes a step about a third cheaper when init already reads captions well.
    Batches are made (images normalized, captions tokenized) by `workers` DataLoader processes
    (None: from the CPU cores, streams.resolve_workers; 0: in this process).

    Batch i is a pure function of (seed, i) and the checkpoint holds everything else that changes,
    so an interrupted run resumed with the same arguments ends with the same weights, whatever the workers.
    progress(step, total, eta, info) after each step, info = {"losses": {"clip", "probe"}, "time": {"data_s": seconds
    waiting for the batch, "compute_s": seconds of the step}} (as distill's).
    Returns {"seconds", "data_s", "compute_s"}: the wall time, and the steps' time waiting for data and computing.
    """
    shapes.check_placement(placement)
    torch.manual_seed(seed)
    model, probes = _start_model(config, init, freeze_text)
    params = [p for p in list(model.parameters()) + list(probes.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    schedule = cosine_lr(opt, lr, WARMUP, steps)
    state_path = Path(out) / STATE_FILE
    start = load_checkpoint(state_path, model, probes, opt) if resume and state_path.exists() else 0
    if start:
        log(f"resumed from {state_path} at step {start}")
    tokenizer = open_clip.SimpleTokenizer(context_length=config["text_cfg"]["context_length"])
    make = _DemoBatch(batch_size, seed, placement, grid_every, text_labels=not freeze_text)
    batches = iter(BatchLoader(StepBatches(make, start, steps, tokenizer, "shapes"), resolve_workers(workers)))
    loss_fn, clock, time_left, t0 = open_clip.ClipLoss(), StepClock(), TimeLeft(), time.time()
    model.train()
    try:
        for step in range(start, steps):
            _, images, labels, text_labels, _, tokens = clock.wait(next, batches)
            schedule(step)
            clip_loss, aux = _losses(model, probes, loss_fn, images, tokens, labels, text_labels)
            opt.zero_grad(set_to_none=True)
            (clip_loss + aux_weight * aux).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            timing = clock.split()  # on the CPU (train-demo's device) the step is done here
            if progress:
                progress(step + 1, steps, time_left(step + 1 - start, steps - start),
                         {"losses": {"clip": clip_loss.item(), "probe": aux.item()}, "time": timing})
            if step % log_every == 0:
                log(f"step {step}/{steps} clip loss {clip_loss.item():.4f} probe loss {aux.item():.4f} "
                    f"{(step - start + 1) * batch_size / (time.time() - t0):.1f} pairs/s elapsed {time.time() - t0:.0f}s "
                    f"data {timing['data_s']:.3f}s compute {timing['compute_s']:.3f}s")
            if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
                save_checkpoint(state_path, model, probes, opt, step + 1)
            if (step + 1) % eval_every == 0 or step + 1 == steps:
                _save_and_evaluate(model, tokenizer, out, config, step + 1, log)
    except (MopeError, RuntimeError) as e:
        raise _stopped(e, state_path) from None
    finally:
        batches.close()  # stops the data workers
    log(f"trained {steps - start} steps in {time.time() - t0:.0f}s (waiting for data {clock.total['data_s']:.1f}s, "
        f"computing {clock.total['compute_s']:.1f}s)")
    return {"seconds": time.time() - t0, **clock.total}


WARMUP = 100  # steps of linear warmup before the cosine decay


def _stopped(error: Exception, state_path: Path) -> Exception:
    """What a training error becomes: a dead data worker (torch's RuntimeError, raised wherever this process was)
    a MopeError naming the data; a MopeError notes the last checkpoint, which stays intact; others stay as they are."""
    error = dead_worker(error, "shapes") or error
    if isinstance(error, MopeError) and state_path.is_file():
        return MopeError(f"{error}; the last checkpoint {state_path} is intact (resume with --resume)")
    return error


def _start_model(config: dict, init: Path | None, freeze_text: bool) -> tuple[open_clip.CLIP, torch.nn.ModuleDict]:
    """The CLIP to train (random, or init's weights) and its attribute probes on both towers."""
    model = open_clip.CLIP(**config)
    if init is not None:
        model.load_state_dict(load_file(_init_weights(Path(init))))
    if freeze_text:
        model.lock_text_tower()
    probes = torch.nn.ModuleDict({"image": AttributeHeads(config["embed_dim"]),
                                  "text": AttributeHeads(config["embed_dim"])})
    return model, probes


def _save_and_evaluate(model, tokenizer, out: Path, config: dict, step: int, log) -> None:
    save_demo(model, out, config)
    log(f"step {step}: held-out colour×shape acc1 " + ", ".join(
        f"{p} {quick_acc1(model, tokenizer, placement=p):.4f}" for p in shapes.PLACEMENTS))
    model.train()


def _init_weights(folder: Path) -> Path:
    weights = folder / "open_clip_model.safetensors"
    if not weights.is_file():
        raise MopeError(f"no {weights.name} in {folder}: --init takes a folder train-demo wrote")
    return weights


class _DemoBatch:
    """Batch `step` of the recipe's shapes stream as the model takes it: (step, normalized images, the images'
    attribute labels, the attributes each caption names (None when the text probe is off), captions)."""

    def __init__(self, batch_size: int, seed: int, placement: str, grid_every: int, text_labels: bool):
        self.batch_size, self.seed, self.placement, self.grid_every = batch_size, seed, placement, grid_every
        self.text_labels = text_labels

    def __call__(self, step: int) -> tuple:
        batch = shapes.stream_batch(self.batch_size, self.seed, step, placement=self.placement,
                                    grid_every=self.grid_every)
        captions = [c[0] for c in batch.captions]
        named = shapes.named_labels(captions) if self.text_labels else None
        return step, images_to_input(batch.images), batch.labels, named, captions


def _losses(model, probes, loss_fn, images: torch.Tensor, tokens: torch.Tensor, labels: dict,
            text_labels: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The CLIP loss and the attribute probes' loss on one batch (the text probe's when text_labels are given)."""
    image_f, text_f, scale = model(images, tokens)
    aux = probes["image"].loss(image_f, labels)
    if text_labels is not None:
        aux = aux + probes["text"].loss(text_f, text_labels)
    return loss_fn(image_f, text_f, scale), aux


def save_checkpoint(path: Path, model, probes, opt, step: int) -> None:
    """Everything training needs to continue, in one atomic file (never half-written)."""
    atomic_torch_save({"model": model.state_dict(), "probes": probes.state_dict(), "optimizer": opt.state_dict(),
                       "step": step, "rng": torch.get_rng_state()}, path)


def load_checkpoint(path: Path, model, probes, opt) -> int:
    """Restore a save_checkpoint file (weights_only: nothing is unpickled); return its step."""
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    probes.load_state_dict(state["probes"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])


@torch.inference_mode()
def quick_acc1(model, tokenizer, n: int = 512, seed: int = 10_000, placement: str = "grid") -> float:
    """64-way colour×shape zero-shot accuracy on held-out images (one prompt), for training logs."""
    model.eval()
    batch = shapes.sample(n, seed=seed, captions_per_image=1, placement=placement)
    classes = [f"{c} {s}" for c in shapes.COLOURS for s in shapes.SHAPES]
    text = model.encode_text(tokenizer([f"a photo of a {c}" for c in classes]), normalize=True)
    image = model.encode_image(images_to_input(batch.images), normalize=True)
    target = batch.labels["colour"] * len(shapes.SHAPES) + batch.labels["shape"]
    return (image @ text.T).argmax(1).eq(target).float().mean().item()


def save_demo(model: torch.nn.Module, out: Path, config: dict = DEMO_CONFIG) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "open_clip_config.json", {
        "model_cfg": config,
        "preprocess_cfg": {"mean": list(MEAN), "std": list(STD), "interpolation": "bicubic", "resize_mode": "shortest"},
    })
    atomic_save_safetensors({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                            out / "open_clip_model.safetensors")
