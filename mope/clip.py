"""The `Clip` record: a loaded CLIP model with what it needs to read images and text."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class Clip:
    """A loaded CLIP: the open_clip module (eval mode) with its tokenizer and image preprocess."""

    model: torch.nn.Module
    tokenizer: Callable
    preprocess: Callable
    name: str
    spec: str
    device: torch.device
    info: dict[str, Any] = field(default_factory=dict)
