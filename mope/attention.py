"""Per-head attention maps: what one head of a (possibly pruned) CLIP attends to for one input.

Vision: the class token's attention over the image patches, as the patch grid. Text: the attention of
the pooled (end-of-text) token over the prompt's tokens. Nothing re-implements open_clip's forward: a
forward pre-hook on the block's attention module captures the input it receives (the `ln_1` output and
the attention mask), and the head's weights are recomputed from that module's `in_proj_weight` rows,
which `nn.MultiheadAttention` and `surgery.PrunedAttention` lay out alike (q, k, v; heads in order).

Heads and layers are named in the source model's indices. In a pruned model, `clip.info["structure"]`
(kept layers / heads per tower, recorded by surgery and in pruning.json) maps them to the pruned
model's blocks; a head or layer the pruning removed comes back as removed, with no weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from .blocks import by_layer
from .clip import Clip
from .errors import MopeError
from .units import BlockView, tower_blocks


@dataclass
class HeadAttention:
    """One head's attention for one input. weights: (rows, cols) patch grid (vision) or (tokens,)
    (text), summing to 1 over the grid plus the class token's attention to itself; None when removed."""

    tower: str
    layer: int
    head: int
    weights: torch.Tensor | None
    tokens: list[str] | None = None   # text: the prompt's tokens, start and end marks included
    removed: str | None = None        # "head removed" / "layer removed" when pruning took it
    self_weight: float | None = None  # vision: the class token's attention to itself


def source_position(clip: Clip, tower: str, layer: int, head: int) -> tuple[int, int] | str:
    """(block index, head position) of source head (layer, head) in `clip`, or why it is not there."""
    structure = (clip.info.get("structure") or {}).get(tower)
    if structure is None:
        blocks = tower_blocks(clip.model, tower)
        if not 0 <= layer < len(blocks) or not 0 <= head < blocks[layer].attn.num_heads:
            raise MopeError(f"{tower} has no head {head} in layer {layer}")
        return layer, head
    if layer not in structure["layers"]:
        return "layer removed"
    heads = [int(h) for h in by_layer(structure["heads"], layer)]
    return (structure["layers"].index(layer), heads.index(head)) if head in heads else "head removed"


def head_attention(clip: Clip, tower: str, layer: int, head: int, image: Image.Image | None = None,
                   text: str | None = None) -> HeadAttention:
    """Attention of source head (layer, head) of `tower` for an image (vision) or a prompt (text)."""
    where = source_position(clip, tower, layer, head)
    tokens = None
    if tower == "vision":
        if image is None:
            raise MopeError("choose an image to see a vision head's attention")
        if getattr(clip.model.visual, "pool_type", "tok") != "tok":
            raise MopeError("this vision tower has no class token: its heads have no class-token attention")
    elif tower == "text":
        if not text or not text.strip():
            raise MopeError("type a prompt to see a text head's attention")
        ids = clip.tokenizer([text])
        tokens = token_strings(clip, ids[0])
    else:
        raise MopeError(f"unknown tower '{tower}'; use vision or text")
    if isinstance(where, str):
        return HeadAttention(tower, layer, head, None, tokens, removed=where)
    block, position = where
    if tower == "vision":
        x = clip.preprocess(image.convert("RGB")).unsqueeze(0).to(clip.device)
        probs = _head_probs(clip, tower, block, position, x)[0]  # (tokens, tokens)
        row = probs[0]
        grid = clip.model.visual.grid_size
        return HeadAttention(tower, layer, head, row[1:].reshape(grid[0], grid[1]), self_weight=row[0].item())
    ids = ids.to(clip.device)
    probs = _head_probs(clip, tower, block, position, ids)[0]
    row = probs[pooled_index(clip, ids)[0]]
    return HeadAttention(tower, layer, head, row[:len(tokens)], tokens)


@torch.inference_mode()
def _head_probs(clip: Clip, tower: str, block: int, position: int, x: torch.Tensor) -> torch.Tensor:
    """(batch, tokens, tokens) softmax attention of one head, from the input its attention module got."""
    view = BlockView(tower_blocks(clip.model, tower)[block])
    attn = view.attn
    seen = {}

    def capture(module, args, kwargs):
        seen["x"], seen["mask"] = args[0], kwargs.get("attn_mask")
        raise _Captured

    hook = attn.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        (clip.model.encode_image if tower == "vision" else clip.model.encode_text)(x)
    except _Captured:
        pass
    finally:
        hook.remove()
    q_in, hd = seen["x"].float(), view.head_dim
    w, b = attn.in_proj_weight.float(), attn.in_proj_bias.float()
    rows = view.head_rows(position)[:2]  # the head's q and k rows
    q, k = (q_in @ w[r].T + b[r] for r in rows)
    logits = q @ k.transpose(-1, -2) / hd ** 0.5
    if seen["mask"] is not None:
        mask = seen["mask"]
        logits = logits.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.float()
    return logits.softmax(-1).cpu()


class _Captured(Exception):
    """Stops the forward pass once the head's input is captured: the later layers are not needed."""


def pooled_index(clip: Clip, ids: torch.Tensor) -> torch.Tensor:
    """The token the text tower pools (open_clip's text_global_pool): end of text, first or last."""
    pool = getattr(clip.model, "text_pool_type", "argmax")
    if pool == "argmax":
        return ids.argmax(dim=-1)
    if pool == "eos":
        return (ids == clip.model.text_eos_id).int().argmax(dim=-1)
    if pool == "first":
        return torch.zeros(len(ids), dtype=torch.long)
    return torch.full((len(ids),), ids.shape[-1] - 1, dtype=torch.long)


def token_strings(clip: Clip, ids: torch.Tensor) -> list[str]:
    """The prompt's tokens as text, up to the pooled (end-of-text) token: the padding after it is dropped."""
    end = pooled_index(clip, ids.unsqueeze(0))[0].item() + 1
    decode = getattr(clip.tokenizer, "decode", None)
    return [decode([t]).strip() if decode else str(t) for t in ids[:end].tolist()]
