"""Distillation: recover a pruned student from its unpruned teacher (MoPE-CLIP, section 3.3).

Losses (weights in DistillConfig):
- affinity: cross-modal knowledge. Soft cross-entropy of the student's image→text and text→image
  similarity distributions against the teacher's, at a temperature.
- feature: uni-modal knowledge. Squared distance between normalized student and teacher embeddings
  (2 − 2·cosine), averaged over the batch, summed over the towers.
- hidden: mean squared error between each kept student layer's output and the output of the teacher
  layer it came from (a depth-pruned student maps kept layer j to teacher layer structure["layers"][j]).
- contrastive: optional CLIP loss of the student on the ground-truth pairs.
The teacher is frozen in eval mode; only the student trains.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from open_clip_train.scheduler import cosine_lr

from .clip import Clip
from .data.streams import BatchLoader, StepClock, dead_worker, pair_batches, resolve_workers
from .errors import MopeError
from .evaluation import evaluate
from .io import atomic_save_safetensors, atomic_torch_save, atomic_write_json, write_failed
from .progress import TimeLeft
from .rules import arguments
from .units import TOWERS, tower_blocks

PRECISIONS = ("auto", "bf16", "fp32")  # auto: bf16 autocast on CUDA, fp32 on CPU


@dataclass
class DistillConfig:
    steps: int = 500
    batch_size: int = 64
    lr: float = 5e-4
    warmup: int = 50
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    temperature: float = 0.05
    affinity: float = 1.0
    feature: float = 1.0
    hidden: float = 0.1  # 1.0 recovered less in the 2-minute tuning runs (README, Distillation)
    contrastive: float = 0.0
    eval_every: int = 100
    checkpoint_every: int = 100
    seed: int = 0
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    workers: int | None = None  # DataLoader worker processes; None: from the CPU core count (streams.resolve_workers)

    def __post_init__(self):
        """Every number by the CLI's rule of the same name (mope.rules): DistillConfig(steps=0) is refused."""
        arguments("DistillConfig", **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "precision"})
        if self.precision not in PRECISIONS:
            raise MopeError(f"DistillConfig: precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


@dataclass
class DistillState:
    step: int = 0
    history: list[dict] = field(default_factory=list)  # eval metrics every eval_every steps
    losses: list[dict] = field(default_factory=list)   # loss terms, every step
    references: dict = field(default_factory=dict)     # eval of the teacher and of the student before step 1


def check_compatible(teacher: Clip, student: Clip) -> None:
    """A student must come from the teacher: same embedding size and residual widths."""
    for tower in TOWERS:
        t, s = tower_blocks(teacher.model, tower), tower_blocks(student.model, tower)
        if not s or t[0].attn.embed_dim != s[0].attn.embed_dim:
            raise MopeError(f"the student's {tower} tower is not derived from the teacher (different widths): "
                            "distill a model pruned from this teacher")
    dims = [m.model.text_projection.shape[-1] if isinstance(m.model.text_projection, torch.Tensor) else None
            for m in (teacher, student)]
    if dims[0] != dims[1]:
        raise MopeError(f"the student's embedding size {dims[1]} differs from the teacher's {dims[0]}")


def layer_map(student: Clip, teacher: Clip) -> dict[str, list[int]]:
    """For each tower, the teacher layer each student layer came from."""
    structure = student.info.get("structure")
    out = {}
    for tower in TOWERS:
        n_s, n_t = len(tower_blocks(student.model, tower)), len(tower_blocks(teacher.model, tower))
        layers = structure[tower]["layers"] if structure else list(range(n_s))
        if len(layers) != n_s or max(layers, default=-1) >= n_t:
            raise MopeError(f"the student's {tower} layers do not map onto the teacher's")
        out[tower] = list(layers)
    return out


class _Hidden:
    """Collects the outputs of chosen blocks during a forward pass."""

    def __init__(self, model, layers: dict[str, list[int]]):
        self.outputs: dict[str, list[torch.Tensor]] = {t: [] for t in layers}
        self.hooks = [tower_blocks(model, t)[i].register_forward_hook(self._keep(t))
                      for t, idx in layers.items() for i in idx]

    def _keep(self, tower):
        return lambda module, args, output: self.outputs[tower].append(output)

    def take(self) -> dict[str, list[torch.Tensor]]:
        out, self.outputs = self.outputs, {t: [] for t in self.outputs}
        return out

    def close(self):
        for h in self.hooks:
            h.remove()


def loss_terms(config: DistillConfig, s_img, s_txt, t_img, t_txt, s_hidden, t_hidden, scale) -> dict[str, torch.Tensor]:
    """Every loss term from normalized embeddings (and hidden states, aligned pairwise)."""
    tau = config.temperature
    s_logits, t_logits = s_img @ s_txt.T / tau, t_img @ t_txt.T / tau
    terms = {
        "affinity": 0.5 * (_soft_ce(s_logits, t_logits) + _soft_ce(s_logits.T, t_logits.T)),
        "feature": (s_img - t_img).pow(2).sum(-1).mean() + (s_txt - t_txt).pow(2).sum(-1).mean(),
    }
    pairs = [(s, t) for tower in s_hidden for s, t in zip(s_hidden[tower], t_hidden[tower])]
    terms["hidden"] = torch.stack([F.mse_loss(s.float(), t.float()) for s, t in pairs]).mean() if pairs else s_img.new_zeros(())
    if config.contrastive:
        labels = torch.arange(len(s_img), device=s_img.device)
        logits = scale * s_img @ s_txt.T
        terms["contrastive"] = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    return terms


def _soft_ce(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    return -(teacher_logits.softmax(-1) * student_logits.log_softmax(-1)).sum(-1).mean()


def distill(teacher: Clip, student: Clip, data: str, config: DistillConfig, out: str | Path,
            eval_task=None, resume: bool = False, progress: Callable | None = None,
            should_stop: Callable[[], bool] | None = None, image_root: str | None = None) -> Clip:
    """Train `student` to imitate `teacher` on the pairs `data` names; checkpoints in `out`.

    progress(step, total, eta_seconds, info) with info = {"losses": {...}, "eval": {...} or None,
    "time": {"data_s": seconds waiting for the batch, "compute_s": seconds of the step itself}}; with an
    eval task, a first call at step 0 (losses {}, no "time") carries the student's eval before training (also
    the first entry of the history) and info["references"] = {"teacher": {...}, "pruned": {...}}.
    Returns the distilled student (also saved to out/final in the pruned-model format).
    """
    check_compatible(teacher, student)
    trainer = _Trainer(teacher, student, config, Path(out))
    state = trainer.starting_state(resume, eval_task, progress)
    start_step = state.step
    batches = trainer.batches(data, state.step, image_root)
    try:
        seconds = trainer.train(state, batches, eval_task, progress, should_stop)
    except torch.OutOfMemoryError:
        raise MopeError(f"out of memory at batch size {config.batch_size}: use a smaller --batch-size") from None
    except RuntimeError as e:
        died = dead_worker(e, data)
        if died is None:
            raise
        raise _checkpoint_note(died, trainer.checkpoint) from None
    finally:
        batches.close()  # stops the data workers
        trainer.model.eval()
    if trainer.rank == 0 and state.step > start_step and state.step % config.checkpoint_every:
        _save_checkpoint(trainer.checkpoint, trainer.model, trainer.optimizer, state, config)
    student.info["distill"] = {"config": asdict(config), "data": data, "teacher": teacher.spec, "steps_done": state.step,
                               "history": state.history, "references": state.references,
                               "final_losses": state.losses[-1] if state.losses else {}, "seconds": seconds}
    return student


class _Trainer:
    """One distillation run: the frozen teacher, the student (DDP-wrapped under torchrun), its AdamW with
    open_clip's warmup + cosine schedule (a pure function of the step, so a resumed run sets the same rates)."""

    def __init__(self, teacher: Clip, student: Clip, config: DistillConfig, out: Path):
        self.teacher, self.student, self.config, self.checkpoint = teacher, student, config, out / "checkpoint"
        self.mapping = layer_map(student, teacher)
        self.rank, self.world = _dist_rank_world()
        self.model, self.device = student.model, student.device
        teacher.model.eval().requires_grad_(False)
        self.ddp = _wrap_ddp(self.model, self.device) if self.world > 1 else self.model
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.schedule = cosine_lr(self.optimizer, config.lr, config.warmup, config.steps)
        self.autocast = _autocast(config, self.device)
        self.weights = {"affinity": config.affinity, "feature": config.feature, "hidden": config.hidden,
                        "contrastive": config.contrastive}

    def starting_state(self, resume: bool, eval_task, progress: Callable | None) -> DistillState:
        """A new state (or the checkpoint's), with the teacher's and the untrained student's evals when asked."""
        torch.manual_seed(self.config.seed + self.rank)  # augmentation draws; a resumed run restores the saved state
        state = _load_checkpoint(self.checkpoint, self.model, self.optimizer) if resume else DistillState()
        if eval_task is not None and not state.history:
            state.references = {"teacher": evaluate(self.teacher, eval_task), "pruned": evaluate(self.student, eval_task)}
            state.history.append({"step": 0, **state.references["pruned"]})
            if progress:
                progress(0, self.config.steps, None,
                         {"losses": {}, "eval": state.history[0], "references": state.references})
        return state

    def batches(self, data: str, start: int, image_root: str | None):
        """(step, images, captions, tokens) from `start` on, read by the DataLoader workers."""
        config = self.config
        batches = pair_batches(data, _train_transform(self.model), config.batch_size, seed=config.seed, start=start,
                               rank=self.rank, world=self.world, image_root=image_root, tokenizer=self.student.tokenizer,
                               stop=config.steps)
        return iter(BatchLoader(batches, resolve_workers(config.workers), pin_memory=self.device.type == "cuda"))

    def train(self, state: DistillState, batches, eval_task, progress: Callable | None,
              should_stop: Callable[[], bool] | None) -> dict[str, float]:
        """Steps until config.steps (or should_stop); returns the seconds spent waiting for data and computing."""
        config, clock, time_left, start_step = self.config, StepClock(), TimeLeft(), state.step
        hooks = (_Hidden(self.model, {t: list(range(len(m))) for t, m in self.mapping.items()}),
                 _Hidden(self.teacher.model, self.mapping))
        self.model.train()
        try:
            while state.step < config.steps and not (should_stop and should_stop()):
                step, images, _, tokens = clock.wait(_next_batch, batches, self.checkpoint)
                terms = self.step(step, images, tokens, *hooks)
                state.step = step + 1
                state.losses.append({"step": state.step, **terms})
                timing = clock.split()  # the losses' .item() waited for the GPU
                evaluated = self.evaluate_when_due(state, eval_task, hooks[0])
                if self.rank == 0 and (state.step % config.checkpoint_every == 0 or state.step == config.steps):
                    _save_checkpoint(self.checkpoint, self.model, self.optimizer, state, config)
                if progress:
                    eta = time_left(state.step - start_step, config.steps - start_step)
                    progress(state.step, config.steps, eta, {"losses": state.losses[-1], "eval": evaluated, "time": timing})
        finally:
            for h in hooks:
                h.close()
        return clock.total

    def step(self, step: int, images: torch.Tensor, tokens: torch.Tensor, s_hooks: _Hidden,
             t_hooks: _Hidden) -> dict[str, float]:
        """One optimizer step of the student on one batch; returns the loss and each of its terms."""
        images, tokens = images.to(self.device, non_blocking=True), tokens.to(self.device, non_blocking=True)
        with torch.no_grad(), self.autocast():
            t_img = self.teacher.model.encode_image(images, normalize=True).float()
            t_txt = self.teacher.model.encode_text(tokens, normalize=True).float()
        t_hidden = t_hooks.take()
        with self.autocast():
            s_img, s_txt, scale = self.ddp(images, tokens)
            terms = loss_terms(self.config, s_img.float(), s_txt.float(), t_img, t_txt, s_hooks.take(), t_hidden, scale)
        loss = sum(self.weights[k] * v for k, v in terms.items() if self.weights[k])
        if not torch.isfinite(loss):
            raise MopeError(f"the loss became {loss.item()} at step {step}: lower --lr; the last checkpoint in "
                            f"{self.checkpoint} is intact (resume from it with --resume)")
        self.schedule(step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}

    def evaluate_when_due(self, state: DistillState, eval_task, s_hooks: _Hidden) -> dict | None:
        """The student's eval every eval_every steps and at the end (added to the history), else None."""
        if eval_task is None or (state.step % self.config.eval_every and state.step != self.config.steps):
            return None
        self.model.eval()
        evaluated = {"step": state.step, **evaluate(self.student, eval_task)}
        state.history.append(evaluated)
        s_hooks.take()  # drop what the evaluation passes left in the hooks
        self.model.train()
        return evaluated


def _next_batch(loader, checkpoint: Path) -> tuple:
    """The next (step, images, captions, tokens); a data error says whether a checkpoint is there to resume."""
    try:
        return next(loader)
    except MopeError as e:
        raise _checkpoint_note(e, checkpoint) from None


def _checkpoint_note(error: MopeError, checkpoint: Path) -> MopeError:
    if (checkpoint / "latest.json").is_file():
        return MopeError(f"{error}; the last checkpoint in {checkpoint} is intact (resume with --resume)")
    return error


def _train_transform(model):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=True)


def _autocast(config: DistillConfig, device: torch.device):
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    if use_bf16 and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    from contextlib import nullcontext

    return nullcontext


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _wrap_ddp(model, device):
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


def _save_checkpoint(folder: Path, model, optimizer, state: DistillState, config: DistillConfig) -> None:
    """Weights, trainer state, then latest.json pointing at them, each written atomically; the previous
    checkpoint is deleted only after. A failure (disk full) leaves the previous checkpoint as it was."""
    new = [folder / f"student-{state.step}.safetensors", folder / f"trainer-{state.step}.pt"]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_save_safetensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, new[0])
        atomic_torch_save({"optimizer": optimizer.state_dict(), "step": state.step, "rng": torch.get_rng_state()}, new[1])
        atomic_write_json(folder / "latest.json", {"step": state.step, "history": state.history,
                                                   "losses": state.losses[-200:], "config": asdict(config),
                                                   "references": state.references})
    except (OSError, MopeError) as e:  # io's writes report a full disk (whichever library wrote) as MopeError
        for f in new:
            f.unlink(missing_ok=True)
        reason = e if isinstance(e, MopeError) else write_failed(folder, e)
        raise MopeError(f"{reason}; the previous checkpoint is intact (resume from it with --resume)") from None
    for old in [*folder.glob("student-*.safetensors"), *folder.glob("trainer-*.pt")]:
        if old not in new:
            old.unlink()


def _load_checkpoint(folder: Path, model, optimizer) -> DistillState:
    import json

    from safetensors.torch import load_file

    latest = folder / "latest.json"
    if not latest.is_file():
        raise MopeError(f"nothing to resume: {folder} has no checkpoint")
    meta = json.loads(latest.read_text())
    step = meta["step"]
    model.load_state_dict(load_file(folder / f"student-{step}.safetensors"))
    trainer = torch.load(folder / f"trainer-{step}.pt", weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    torch.set_rng_state(trainer["rng"])
    return DistillState(step=step, history=meta.get("history", []), losses=meta.get("losses", []),
                        references=meta.get("references", {}))
