"""The prunable units of a CLIP: attention heads, FFN neuron groups and layers of each tower."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from torch import nn

from .errors import MopeError

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


def head_dim(block: nn.Module) -> int:
    return block.attn.head_dim


def unit_params(model: nn.Module, unit: Unit, group_size: int) -> int:
    """Parameters the unit owns: what surgery removes."""
    block = tower_blocks(model, unit.tower)[unit.layer]
    width = block.attn.embed_dim
    if unit.kind == "head":
        hd = head_dim(block)
        return 3 * hd * width + 3 * hd + hd * width
    if unit.kind == "neurons":
        return group_size * width + group_size + group_size * width
    return sum(p.numel() for p in block.parameters())


def tokens_of(model: nn.Module, tower: str) -> int:
    """Sequence length the tower's transformer runs on."""
    if tower == "vision":
        grid = model.visual.grid_size
        return grid[0] * grid[1] + (0 if getattr(model.visual, "pool_type", "tok") == "none" else 1)
    return model.context_length if hasattr(model, "context_length") else model.text.context_length


def unit_flops(model: nn.Module, unit: Unit, group_size: int) -> int:
    """Forward FLOPs (2 × multiply-adds) per sample the unit costs in its tower's transformer."""
    block = tower_blocks(model, unit.tower)[unit.layer]
    width, seq = block.attn.embed_dim, tokens_of(model, unit.tower)
    if unit.kind == "head":
        hd = head_dim(block)
        return 2 * seq * (4 * hd * width) + 2 * 2 * seq * seq * hd
    if unit.kind == "neurons":
        return 2 * seq * 2 * group_size * width
    heads, ffn = heads_of(block), block.mlp.c_fc.out_features
    hd = head_dim(block)
    return heads * (2 * seq * 4 * hd * width + 4 * seq * seq * hd) + 2 * seq * 2 * ffn * width
