"""Fingerprints of models and the on-disk cache of results keyed by them.

The cache only saves work: when it cannot be read or written (a full or read-only disk, a broken file),
`cache_get` is a miss and `cache_set` a warning, never the end of the work being cached.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import warnings

import diskcache
import torch

from .settings import mope_home


def open_cache(name: str) -> diskcache.Cache:
    """A diskcache Cache that never evicts (the default policy culls silently at 1 GB)."""
    return diskcache.Cache(str(mope_home() / name), eviction_policy="none", size_limit=2**40)


def cache_get(name: str, key: str):
    """The cached value, or None (not there, or the cache cannot be read: a warning says why)."""
    try:
        with open_cache(name) as store:
            return store.get(key)
    except (sqlite3.Error, OSError) as e:
        _unusable(name, e)
        return None


def cache_set(name: str, items: dict) -> None:
    """Store every key → value of `items`; a cache that cannot be written is a warning (the work goes on)."""
    try:
        with open_cache(name) as store:
            for key, value in items.items():
                store.set(key, value)
    except (sqlite3.Error, OSError) as e:
        _unusable(name, e)


def _unusable(name: str, error: Exception) -> None:
    warnings.warn(f"the {name} cache under {mope_home()} could not be used ({error}); carrying on without it "
                  "(free disk space there to cache again)", stacklevel=3)


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
