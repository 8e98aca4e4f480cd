"""First-order MoPE: every unit's per-image loss increase estimated from one backward pass.

Each block of the tower runs with per-sample gates (1: kept) on its heads' outputs, its FFN neurons and the block
itself (open_clip's own block forward with masks, see ablation.masked_block_forward); removing a unit sets its
gates to 0, so the first-order estimate of its loss increase on image i is −∂loss_i/∂gate_i, summed over the
unit's gates (a neuron group: its neurons). One gate per sample makes the gradient of the summed loss per-image.
On the demo model its per-image correlation with the exact increase is 0.97 (median over units), while the
means rank the units poorly (second-order terms shift them), so anytime scoring uses it only for the images a
unit has not run yet (mope.scoring._Anytime.estimate), never as a score of its own.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from .ablation import blocks_replaced, masked_block_forward
from .units import Unit, tower_blocks

KINDS = ("head", "neurons", "layer")  # the gates of a block


class _Gated(nn.Module):
    """A block run with per-sample gates on its heads, neurons and whole output (x + gate · (block(x) − x))."""

    def __init__(self, block: nn.Module, heads: torch.Tensor, neurons: torch.Tensor, layer: torch.Tensor):
        super().__init__()
        self.block, self.heads, self.neurons, self.layer = block, heads, neurons, layer

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        none = torch.zeros(len(x), dtype=torch.bool, device=x.device)  # no sample skips the block: the gate does
        y = masked_block_forward(self.block, x, attn_mask, self.heads, self.neurons, none)
        return x + self.layer.to(x.dtype).view(-1, 1, 1) * (y - x)


@contextmanager
def gated(model: nn.Module, tower: str, rows: int, device) -> Iterator[list[dict[str, torch.Tensor]]]:
    """The tower's blocks run with fresh per-sample gates (ones, requiring grad) for `rows` samples; yields them,
    per layer {"head": (rows, heads), "neurons": (rows, ffn), "layer": (rows,)}. The blocks are put back after."""
    blocks = tower_blocks(model, tower)
    gates = [{"head": torch.ones(rows, b.attn.num_heads, device=device, requires_grad=True),
              "neurons": torch.ones(rows, b.mlp.c_fc.out_features, device=device, requires_grad=True),
              "layer": torch.ones(rows, device=device, requires_grad=True)} for b in blocks]
    with blocks_replaced(model, tower, lambda _: [_Gated(b, g["head"], g["neurons"], g["layer"]) for b, g in zip(blocks, gates)]):
        yield gates


def unit_gradient(unit: Unit, grads: list[dict[str, torch.Tensor]], group_size: int) -> torch.Tensor:
    """Per sample, ∂loss/∂(the unit's gates), summed over them: (rows,)."""
    g = grads[unit.layer]
    if unit.kind == "head":
        return g["head"][:, unit.index]
    if unit.kind == "neurons":
        return g["neurons"][:, unit.index * group_size:(unit.index + 1) * group_size].sum(1)
    return g["layer"]


def loss_increases(model: nn.Module, tower: str, units: list[Unit], group_size: int,
                   chunks: Iterable[tuple[int, Callable[[], torch.Tensor]]],
                   should_stop: Callable[[], None] = lambda: None) -> torch.Tensor:
    """(units × samples) first-order loss increase of removing each unit, per sample in the chunks' order.

    chunks: (rows of the batch, run): run() runs the batch through the tower and returns its real (unpadded,
    leading) rows' per-sample losses; it runs inside `gated`, with grad enabled. should_stop() is called
    between chunks (it raises to stop)."""
    device = next(model.parameters()).device
    pieces = []
    for rows, run in chunks:
        should_stop()
        with torch.enable_grad(), gated(model, tower, rows, device) as gates:
            loss = run()
            flat = [g[k] for g in gates for k in KINDS]
            found = torch.autograd.grad(loss.sum(), flat, allow_unused=True)
        grads = [{k: torch.zeros_like(g[k]) if d is None else d for k, d in zip(KINDS, found[3 * i:3 * i + 3])}
                 for i, g in enumerate(gates)]
        pieces.append(torch.stack([-unit_gradient(u, grads, group_size)[:len(loss)] for u in units]).float().cpu())
    return torch.cat(pieces, 1)
