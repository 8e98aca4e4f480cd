"""The prunable units of a CLIP: attention heads, FFN neuron groups and layers of each tower."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .errors import MopeError
from .rules import arguments

TOWERS = ("vision", "text")


def tower_transformer(model: nn.Module, tower: str) -> nn.Module:
    """The open_clip Transformer of a tower (vision: model.visual; text: model or model.text)."""
    if tower == "vision":
        return model.visual.transformer
    if tower == "text":
        return model.text.transformer if hasattr(model, "text") else model.transformer
    raise MopeError(f"unknown tower '{tower}'; use vision or text")


def tower_blocks(model: nn.Module, tower: str) -> nn.ModuleList:
    return tower_transformer(model, tower).resblocks


def tower_module(model: nn.Module, tower: str) -> nn.Module:
    """The whole tower, for parameter counts."""
    return model.visual if tower == "vision" else (model.text if hasattr(model, "text") else model.transformer)


def heads_of(block: nn.Module) -> int:
    return block.attn.num_heads


class BlockView:
    """Where a block's heads and FFN neurons live in its weights: the one place that knows the layout.

    Head h owns rows h*hd:(h+1)*hd of each of the q, k and v thirds of attn.in_proj_weight (and
    in_proj_bias) and columns h*hd:(h+1)*hd of attn.out_proj.weight; in between, the attention's
    (batch, seq, 3 · heads · hd) projection splits as (3, heads, hd) (see `split_qkv`). FFN neuron j owns
    row j of mlp.c_fc (weight and bias) and column j of mlp.c_proj.weight. Works for
    nn.MultiheadAttention and for a head-pruned attention alike.
    """

    def __init__(self, block: nn.Module):
        self.block, self.attn = block, block.attn

    @property
    def heads(self) -> int:
        return self.attn.num_heads

    @property
    def head_dim(self) -> int:
        return self.attn.head_dim

    @property
    def width(self) -> int:
        return self.attn.embed_dim

    @property
    def ffn(self) -> int:
        return self.block.mlp.c_fc.out_features

    def head_columns(self, head: int) -> slice:
        """The head's columns of out_proj.weight (and its slice of the concatenated head outputs)."""
        return slice(head * self.head_dim, (head + 1) * self.head_dim)

    def head_rows(self, head: int) -> list[slice]:
        """The head's q, k and v rows of in_proj_weight / in_proj_bias."""
        inner = self.attn.in_proj_weight.shape[0] // 3  # heads · hd: the q, k, v thirds
        hd = self.head_dim
        return [slice(k * inner + head * hd, k * inner + (head + 1) * hd) for k in range(3)]

    def columns_of_heads(self, heads: Sequence[int]) -> torch.Tensor:
        """out_proj columns of `heads`, in that order."""
        hd = self.head_dim
        return torch.tensor([h * hd + j for h in heads for j in range(hd)], dtype=torch.long)

    def rows_of_heads(self, heads: Sequence[int]) -> torch.Tensor:
        """in_proj rows of `heads`: their q rows, then their k rows, then their v rows."""
        cols = self.columns_of_heads(heads)
        inner = self.attn.in_proj_weight.shape[0] // 3
        return torch.cat([cols + k * inner for k in range(3)]) if len(cols) else cols

    @staticmethod
    def neuron_slice(group: int, group_size: int) -> slice:
        """A neuron group's rows of mlp.c_fc and columns of mlp.c_proj."""
        return slice(group * group_size, (group + 1) * group_size)

    def weights(self, kind: str, index: int, group_size: int) -> list[tuple[nn.Parameter, tuple]]:
        """(parameter, index) pairs of the weights a head, neuron group or the layer owns."""
        if kind == "layer":
            return [(p, (...,)) for p in self.block.parameters()]
        if kind == "head":
            return [(self.attn.in_proj_weight, (self.rows_of_heads([index]),)),
                    (self.attn.out_proj.weight, (slice(None), self.head_columns(index)))]
        cols = self.neuron_slice(index, group_size)
        mlp = self.block.mlp
        return [(mlp.c_fc.weight, (cols,)), (mlp.c_proj.weight, (slice(None), cols))]

    def params(self, kind: str, group_size: int) -> int:
        """Parameters one head, one neuron group or the layer owns: what surgery removes."""
        if kind == "head":
            return 3 * self.head_dim * self.width + 3 * self.head_dim + self.head_dim * self.width
        if kind == "neurons":
            return group_size * self.width + group_size + group_size * self.width
        return sum(p.numel() for p in self.block.parameters())


def split_qkv(qkv: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """(batch, seq, 3 · heads · hd) in_proj output → (3, batch, heads, seq, hd): q, k, v per head."""
    b, s, _ = qkv.shape
    return qkv.view(b, s, 3, heads, head_dim).permute(2, 0, 3, 1, 4)


def unit_weights(model: nn.Module, unit: "Unit", group_size: int) -> list[tuple[nn.Parameter, tuple]]:
    """(parameter, index) pairs of the weights a unit owns: what magnitude and Taylor sum over."""
    return BlockView(tower_blocks(model, unit.tower)[unit.layer]).weights(unit.kind, unit.index, group_size)


def tower_summary(model: nn.Module, tower: str) -> dict:
    blocks = tower_blocks(model, tower)
    params = sum(p.numel() for p in tower_module(model, tower).parameters())
    if tower == "text" and not hasattr(model, "text"):
        params += sum(p.numel() for n, p in model.named_parameters()
                      if n.startswith(("token_embedding", "positional_embedding", "ln_final", "text_projection")))
    return {
        "layers": len(blocks),
        "width": blocks[0].attn.embed_dim if len(blocks) else 0,
        "heads": [heads_of(b) for b in blocks],
        "ffn": [b.mlp.c_fc.out_features for b in blocks],
        "params": params,
    }


def model_summary(model: nn.Module) -> dict:
    """Per-tower shape and parameter counts, and the total parameter count."""
    return {"params": sum(p.numel() for p in model.parameters()),
            **{tower: tower_summary(model, tower) for tower in TOWERS}}


KINDS = ("head", "neurons", "layer")


@dataclass(frozen=True, order=True)
class Unit:
    """One prunable thing: a head, a group of FFN neurons, or a whole layer of a tower."""

    tower: str
    kind: str
    layer: int
    index: int = 0

    @property
    def name(self) -> str:
        base = f"{self.tower}.L{self.layer}"
        return base if self.kind == "layer" else f"{base}.{self.kind}{self.index}"

    @classmethod
    def parse(cls, name: str) -> "Unit":
        parts = name.split(".")
        try:
            tower, layer = parts[0], int(parts[1].lstrip("L"))
            if len(parts) == 2:
                return cls(tower, "layer", layer)
            kind = "head" if parts[2].startswith("head") else "neurons"
            return cls(tower, kind, layer, int(parts[2][len(kind):]))
        except (IndexError, ValueError):
            raise MopeError(f"'{name}' is not a unit name (e.g. vision.L3.head5, text.L0.neurons2, vision.L7)") from None


def default_group_size(ffn_width: int) -> int:
    """64 neurons per group where it divides the FFN width (ViT-B: 3072/64), else the largest divisor ≤ 64."""
    return max(g for g in range(1, 65) if ffn_width % g == 0)


def check_group_size(model: nn.Module, towers: Sequence[str], group_size: int | None) -> dict[str, int]:
    """The neuron-group size per tower; a clear error if it does not divide every layer's FFN width."""
    arguments("mope.score", group_size=group_size)
    sizes = {}
    for tower in towers:
        widths = {b.mlp.c_fc.out_features for b in tower_blocks(model, tower)}
        g = group_size or default_group_size(math.gcd(*widths))
        bad = [w for w in widths if w % g]
        if bad:
            raise MopeError(f"group size {g} does not divide the {tower} FFN width {bad[0]}; "
                            f"pick a divisor such as {default_group_size(bad[0])}")
        sizes[tower] = g
    return sizes


def enumerate_units(model: nn.Module, towers: Sequence[str] = TOWERS, kinds: Sequence[str] = KINDS,
                    group_sizes: dict[str, int] | None = None) -> list[Unit]:
    """Units in a stable order: tower, then layer, then kind (heads, neuron groups, the layer), then index."""
    for k in kinds:
        if k not in KINDS:
            raise MopeError(f"unknown unit kind '{k}'; use head, neurons or layer")
    group_sizes = group_sizes or check_group_size(model, towers, None)
    units = []
    for tower in towers:
        for layer, block in enumerate(tower_blocks(model, tower)):
            if "head" in kinds:
                units += [Unit(tower, "head", layer, h) for h in range(heads_of(block))]
            if "neurons" in kinds:
                units += [Unit(tower, "neurons", layer, g)
                          for g in range(block.mlp.c_fc.out_features // group_sizes[tower])]
            if "layer" in kinds:
                units.append(Unit(tower, "layer", layer))
    return units


def unit_params(model: nn.Module, unit: Unit, group_size: int) -> int:
    """Parameters the unit owns: what surgery removes."""
    return BlockView(tower_blocks(model, unit.tower)[unit.layer]).params(unit.kind, group_size)


def tokens_of(model: nn.Module, tower: str) -> int:
    """Sequence length the tower's transformer runs on."""
    if tower == "vision":
        grid = model.visual.grid_size
        return grid[0] * grid[1] + (0 if getattr(model.visual, "pool_type", "tok") == "none" else 1)
    return model.context_length if hasattr(model, "context_length") else model.text.context_length


def unit_flops(model: nn.Module, unit: Unit, group_size: int) -> int:
    """Forward FLOPs (2 × multiply-adds) per sample the unit costs in its tower's transformer."""
    view = BlockView(tower_blocks(model, unit.tower)[unit.layer])
    width, hd, seq = view.width, view.head_dim, tokens_of(model, unit.tower)
    if unit.kind == "head":
        return 2 * seq * (4 * hd * width) + 2 * 2 * seq * seq * hd
    if unit.kind == "neurons":
        return 2 * seq * 2 * group_size * width
    return view.heads * (2 * seq * 4 * hd * width + 4 * seq * seq * hd) + 2 * seq * 2 * view.ffn * width
