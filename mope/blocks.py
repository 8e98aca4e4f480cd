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

from .units import BlockView, split_qkv, tower_transformer


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
        return attend(self, query, attn_mask), None


def attend(attn: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
           head_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Self-attention of `attn` (nn.MultiheadAttention's parameters, or a PrunedAttention) on x (batch first):
    in_proj, scaled dot-product attention per head, out_proj. head_mask (batch, heads): 1 keeps a head's
    output, 0 removes it. With no head left, the layer adds out_proj.bias."""
    b, s, _ = x.shape
    heads, hd = attn.num_heads, attn.head_dim
    if heads == 0:
        return attn.out_proj.bias.expand(b, s, attn.embed_dim).to(x.dtype)
    qkv = F.linear(x, attn.in_proj_weight.to(x.dtype), attn.in_proj_bias.to(x.dtype))
    q, k, v = split_qkv(qkv, heads, hd)
    mask = attn_mask.to(x.dtype) if attn_mask is not None else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if head_mask is not None:
        out = out * head_mask.to(x.dtype).view(b, heads, 1, 1)
    return attn.out_proj(out.transpose(1, 2).reshape(b, s, heads * hd))


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
                block.attn = _pruned_attention(block, heads, copy_weights)
            if len(neurons) != block.mlp.c_fc.out_features:
                block.mlp.c_fc = _take_linear(block.mlp.c_fc, torch.tensor(neurons, dtype=torch.long), dim=0)
                block.mlp.c_proj = _take_linear(block.mlp.c_proj, torch.tensor(neurons, dtype=torch.long), dim=1)
            kept.append(block)
        transformer.resblocks = nn.ModuleList(kept)
        transformer.layers = len(kept)
    return model


def by_layer(mapping: dict, layer: int):
    """mapping[layer], whether its keys are ints or (read back from JSON) strings."""
    return mapping[layer] if layer in mapping else mapping[str(layer)]


def _pruned_attention(block: nn.Module, heads: list[int], copy_weights: bool) -> PrunedAttention:
    attn = block.attn
    new = PrunedAttention(attn.embed_dim, len(heads), attn.head_dim).to(attn.in_proj_weight.device,
                                                                         attn.in_proj_weight.dtype)
    view = BlockView(block)
    cols, rows = view.columns_of_heads(heads), view.rows_of_heads(heads)
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


def twin(module: nn.Module, **swapped: nn.Module) -> nn.Module:
    """A shallow twin of `module` (same class, forward, parameters and other children) with some children swapped.

    The original is untouched, so a model other threads are using can be run with a child replaced.
    """
    other = object.__new__(type(module))
    other.__dict__.update(module.__dict__)
    object.__setattr__(other, "_modules", {**module._modules, **swapped})
    return other


def with_attention(module: nn.Module, make) -> nn.Module:
    """A twin of `module` in which every attention (nn.MultiheadAttention, PrunedAttention) is make(attention);
    parameters are shared, nothing is copied and `module` is untouched."""
    if isinstance(module, (nn.MultiheadAttention, PrunedAttention)):
        return make(module)
    changed = {}
    for name, child in module._modules.items():
        new = with_attention(child, make) if child is not None else None
        if new is not child:
            changed[name] = new
    return twin(module, **changed) if changed else module

