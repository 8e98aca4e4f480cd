"""Reshaping transformer blocks: heads, FFN neurons and layers kept by index.

`nn.MultiheadAttention` cannot run with fewer heads than embed_dim / head_dim, so a block that loses
heads gets a `PrunedAttention`: the same parameter names (in_proj_weight, in_proj_bias, out_proj.*),
the same call signature, `F.scaled_dot_product_attention` inside. FFN neurons are rows of c_fc and
columns of c_proj. Layers leave the ModuleList.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .units import tower_transformer


class PrunedAttention(nn.Module):
    """Multi-head self-attention with any number of heads (zero included), batch-first."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.batch_first = True
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner))
        self.out_proj = _quiet_linear(inner, embed_dim)

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None):
        b, s, _ = query.shape
        if self.num_heads == 0:  # no head left: the layer still adds out_proj.bias
            return self.out_proj.bias.expand(b, s, self.embed_dim).to(query.dtype), None
        qkv = F.linear(query, self.in_proj_weight.to(query.dtype), self.in_proj_bias.to(query.dtype))
        q, k, v = qkv.view(b, s, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        mask = attn_mask.to(query.dtype) if attn_mask is not None else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, s, -1)), None


def _quiet_linear(in_features: int, out_features: int, **kw) -> nn.Linear:
    """nn.Linear that does not warn when nothing is left (zero heads or neurons: an empty weight)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return nn.Linear(in_features, out_features, **kw)


def apply_structure(model: nn.Module, structure: dict, copy_weights: bool = True) -> nn.Module:
    """Shrink `model` in place to `structure` (kept_structure's format, indices of the source model).

    copy_weights=False only rebuilds shapes (for loading a saved pruned model).
    """
    for tower, spec in structure.items():
        transformer = tower_transformer(model, tower)
        blocks = transformer.resblocks
        kept = []
        for i in spec["layers"]:
            block = blocks[i]
            heads = [int(h) for h in by_layer(spec["heads"], i)]
            neurons = [int(n) for n in by_layer(spec["neurons"], i)]
            if len(heads) != block.attn.num_heads:
                block.attn = _pruned_attention(block.attn, heads, copy_weights)
            if len(neurons) != block.mlp.c_fc.out_features:
                block.mlp.c_fc = _take_linear(block.mlp.c_fc, torch.tensor(neurons, dtype=torch.long), dim=0)
                block.mlp.c_proj = _take_linear(block.mlp.c_proj, torch.tensor(neurons, dtype=torch.long), dim=1)
            kept.append(block)
        transformer.resblocks = nn.ModuleList(kept)
        transformer.layers = len(kept)
    return model


def by_layer(mapping: dict, layer: int):
    return mapping[layer] if layer in mapping else mapping[str(layer)]


def _pruned_attention(attn: nn.Module, heads: list[int], copy_weights: bool) -> PrunedAttention:
    hd, d = attn.head_dim, attn.embed_dim
    new = PrunedAttention(d, len(heads), hd).to(attn.in_proj_weight.device, attn.in_proj_weight.dtype)
    cols = torch.tensor([h * hd + j for h in heads for j in range(hd)], dtype=torch.long)
    inner = attn.in_proj_weight.shape[0] // 3  # embed_dim, or fewer for an already pruned attention
    rows = torch.cat([cols + k * inner for k in range(3)]) if len(cols) else cols
    with torch.no_grad():
        new.in_proj_weight.copy_(attn.in_proj_weight[rows])
        new.in_proj_bias.copy_(attn.in_proj_bias[rows])
        new.out_proj.weight.copy_(attn.out_proj.weight[:, cols])
        new.out_proj.bias.copy_(attn.out_proj.bias)
    return new


def _take_linear(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A Linear keeping the output rows (dim=0) or input columns (dim=1) in index (HF prune_linear_layer)."""
    w = layer.weight.index_select(dim, index.to(layer.weight.device)).detach().clone()
    b = layer.bias.detach().clone() if dim == 1 else layer.bias[index.to(layer.bias.device)].detach().clone()
    new = _quiet_linear(w.shape[1], w.shape[0], device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        new.bias.copy_(b)
    return new
