"""Exact ablation: remove units without surgery, computing what the pruned network would compute.

Two forms:
- `ablated(model, units)`: zeroes the weights a unit reaches the residual stream through (a head's
  columns of attn.out_proj.weight, a neuron's column of mlp.c_proj.weight) and turns removed layers
  into identities; everything is restored bit-exactly on exit. The reference (naive) path.
- `MaskedBlock`: one block run with per-sample head and neuron masks, so many ablations of one layer
  share a batched forward pass. The fast path.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .units import Unit, tower_blocks, tower_transformer


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
                if unit.kind == "head":
                    weight, width = block.attn.out_proj.weight, block.attn.head_dim
                else:
                    weight, width = block.mlp.c_proj.weight, group_sizes[unit.tower]
                cols = slice(unit.index * width, (unit.index + 1) * width)
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
    attn = block.attn
    b, s, _ = x.shape
    h, hd = attn.num_heads, attn.head_dim
    if h:
        qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.view(b, s, 3, h, hd).permute(2, 0, 3, 1, 4)
        mask = attn_mask.to(x.dtype) if attn_mask is not None else None
        heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask) * head_mask.to(x.dtype).view(b, h, 1, 1)
        y = x + block.ls_1(attn.out_proj(heads.transpose(1, 2).reshape(b, s, h * hd)))
    else:  # every head already pruned away: the layer adds out_proj.bias
        y = x + block.ls_1(attn.out_proj.bias.to(x.dtype).expand_as(x))
    hidden = block.mlp.gelu(block.mlp.c_fc(block.ln_2(y))) * neuron_mask.to(x.dtype).unsqueeze(1)
    y = y + block.ls_2(block.mlp.c_proj(hidden))
    return torch.where(skip.view(b, 1, 1), x, y)


@contextmanager
def starting_at(model: nn.Module, tower: str, first: nn.Module, layer: int) -> Iterator[None]:
    """Run the tower's transformer as [first] + blocks[layer+1:], skipping the blocks before `layer`."""
    transformer = tower_transformer(model, tower)
    original = transformer.resblocks
    transformer.resblocks = nn.ModuleList([first, *original[layer + 1:]])
    try:
        yield
    finally:
        transformer.resblocks = original
