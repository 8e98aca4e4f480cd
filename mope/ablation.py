"""Exact ablation: remove units without surgery, computing what the pruned network would compute.

Two forms:
- `ablated(model, units)`: zeroes the weights a unit reaches the residual stream through (a head's
  columns of attn.out_proj.weight, a neuron's column of mlp.c_proj.weight) and turns removed layers
  into identities; everything is restored bit-exactly on exit. The reference (naive) path.
- `MaskedBlock`: one block run with per-sample head and neuron masks, so many ablations of one layer
  share a batched forward pass. The fast path. It runs open_clip's own block forward (on a twin of the
  block whose attention takes a head mask and whose FFN activation is scaled by the neuron mask), so
  the block's code is not copied here and the shared model is never modified.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from .blocks import attend, twin
from .units import BlockView, Unit, tower_blocks, tower_transformer


@contextmanager
def ablated(model: nn.Module, units: Iterable[Unit], group_sizes: dict[str, int]) -> Iterator[nn.Module]:
    """Temporarily remove `units` from `model` (in place); restores every weight bit-exactly."""
    saved: list[tuple[torch.Tensor, slice, torch.Tensor]] = []
    hooks = []
    try:
        with torch.no_grad():
            for unit in units:
                block = tower_blocks(model, unit.tower)[unit.layer]
                if unit.kind == "layer":
                    hooks.append(block.register_forward_hook(_identity_hook))
                    continue
                view = BlockView(block)
                if unit.kind == "head":
                    weight, cols = block.attn.out_proj.weight, view.head_columns(unit.index)
                else:
                    weight, cols = block.mlp.c_proj.weight, view.neuron_slice(unit.index, group_sizes[unit.tower])
                saved.append((weight, cols, weight[:, cols].clone()))
                weight[:, cols] = 0
        yield model
    finally:
        with torch.no_grad():
            for weight, cols, original in reversed(saved):
                weight[:, cols] = original
        for h in hooks:
            h.remove()


def _identity_hook(module, args, output):
    """A removed layer passes its input through: no residual contribution at all."""
    return args[0]


class MaskedBlock(nn.Module):
    """A ResidualAttentionBlock run on a fixed input with per-sample head / neuron masks.

    It ignores the tensor it is called with and starts from `x` (the cached hidden state entering
    the block, already repeated once per ablation). head_mask: (B, heads), neuron_mask: (B, ffn);
    1 keeps, 0 removes. skip: (B,) bool, samples whose whole layer is removed.
    """

    def __init__(self, block: nn.Module, x: torch.Tensor, head_mask: torch.Tensor, neuron_mask: torch.Tensor,
                 skip: torch.Tensor):
        super().__init__()
        self.block, self.x, self.head_mask, self.neuron_mask, self.skip = block, x, head_mask, neuron_mask, skip

    def get_weight_dtype(self) -> torch.dtype:
        return self.block.get_weight_dtype()

    def forward(self, _ignored: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_block_forward(self.block, self.x, attn_mask, self.head_mask, self.neuron_mask, self.skip)


def masked_block_forward(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None,
                         head_mask: torch.Tensor, neuron_mask: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """open_clip's own forward of `block` on x, with per-sample head and neuron masks and skipped layers.

    The forward runs on a twin of the block whose attention is `attend` with a head mask and whose FFN
    activation is multiplied by the neuron mask; the block itself is not changed (other threads may use it).
    """
    mlp = twin(block.mlp, gelu=_Scaled(block.mlp.gelu, neuron_mask.to(x.dtype).unsqueeze(1)))
    y = twin(block, attn=_HeadMasked(block.attn, head_mask), mlp=mlp).forward(x, attn_mask=attn_mask)
    return torch.where(skip.view(-1, 1, 1), x, y)


class _HeadMasked(nn.Module):
    """Stands in for a block's attention (same call signature) with a per-sample head mask."""

    def __init__(self, attn: nn.Module, head_mask: torch.Tensor):
        super().__init__()
        self.attn, self.head_mask = attn, head_mask

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None):
        return attend(self.attn, query, attn_mask, self.head_mask), None


class _Scaled(nn.Module):
    """A module's output times a fixed tensor (the FFN activation times the neuron mask)."""

    def __init__(self, module: nn.Module, scale: torch.Tensor):
        super().__init__()
        self.module, self.scale = module, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) * self.scale


@contextmanager
def starting_at(model: nn.Module, tower: str, first: nn.Module, layer: int) -> Iterator[None]:
    """Run the tower's transformer as [first] + blocks[layer+1:], skipping the blocks before `layer`."""
    with blocks_replaced(model, tower, lambda blocks: [first, *blocks[layer + 1:]]):
        yield


@contextmanager
def blocks_replaced(model: nn.Module, tower: str, make: Callable[[nn.ModuleList], list[nn.Module]]) -> Iterator[None]:
    """Run the tower's transformer on make(its blocks) (a list of modules called like blocks); the blocks are put
    back after. The shared model's blocks themselves are not changed."""
    transformer = tower_transformer(model, tower)
    original = transformer.resblocks
    transformer.resblocks = nn.ModuleList(make(original))
    try:
        yield
    finally:
        transformer.resblocks = original
