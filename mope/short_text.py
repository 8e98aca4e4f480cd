"""The text tower run on its inputs' real length instead of the full context.

Under a causal mask the pooled (end-of-text) token attends only to the tokens before it, so the padding after
the longest input changes nothing in exact arithmetic, and dropping it makes a text forward several times
cheaper (the shapes prompts: at most 10 of 77 tokens, start and end included). Matrix products over fewer rows round differently
(embeddings differ by ~1e-6), so only estimates use it: anytime scoring's first look.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def _text(model: nn.Module) -> nn.Module:
    """The module holding the text tower's positional embedding and causal mask (CLIP itself, or CustomTextCLIP.text)."""
    return model.text if hasattr(model, "text") else model


def pooled_positions(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor | None:
    """Per row, the position the tower pools its embedding from; None when the pooled token may see a token after it
    (no causal mask, a padding mask, an appended class token, or pooling other than argmax / eos)."""
    text = _text(model)
    if getattr(text, "attn_mask", None) is None or getattr(text, "cls_emb", None) is not None \
            or getattr(text, "use_pad_mask", False):
        return None
    pool = getattr(text, "text_pool_type", getattr(text, "pool_type", "argmax"))
    if pool == "argmax":
        return tokens.argmax(dim=-1)
    eos = getattr(text, "text_eos_id", getattr(text, "eos_id", None))
    if pool == "eos" and eos is not None:
        return (tokens == eos).int().argmax(dim=-1)
    return None


def short_length(model: nn.Module, tokens: torch.Tensor) -> int | None:
    """The shortest context holding every row's pooled token; None when there is nothing to drop or dropping
    tokens could change the embeddings (see pooled_positions)."""
    positions = pooled_positions(model, tokens)
    if positions is None or not len(positions):
        return None
    length = int(positions.max()) + 1
    return length if length < tokens.shape[1] else None


@contextmanager
def shortened(model: nn.Module, length: int) -> Iterator[None]:
    """The text tower takes tokens of `length` columns (tokens[:, :length]): its positional embedding and causal
    mask are cut to that length for the duration, and restored (the same objects) on exit."""
    text = _text(model)
    positional, mask = text.positional_embedding, text.attn_mask
    text.positional_embedding = nn.Parameter(positional.detach()[:length], requires_grad=False)
    text.attn_mask = mask[:length, :length]
    try:
        yield
    finally:
        text.positional_embedding, text.attn_mask = positional, mask
