"""Fingerprints of models and the on-disk cache of results keyed by them."""
from __future__ import annotations

import hashlib
import json

import diskcache
import torch

from .settings import mope_home


def open_cache(name: str) -> diskcache.Cache:
    """A diskcache Cache that never evicts (the default policy culls silently at 1 GB)."""
    return diskcache.Cache(str(mope_home() / name), eviction_policy="none", size_limit=2**40)


def model_fingerprint(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer (names, shapes, dtypes, values)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def key_of(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
