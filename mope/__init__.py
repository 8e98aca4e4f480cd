"""MoPE-CLIP Explorer: score, prune and distill CLIP models with the Module-wise Pruning Error.

The names below load on first use, so `import mope.jobs` (the worker, the CLI's job commands) starts without
torch. `mope.plan` and `mope.evaluate` are the functions, as they always were, not their modules.
"""
from __future__ import annotations

import sys
import types
from importlib import import_module

_EXPORTS = {"Budget": "plan", "Plan": "plan", "plan": "plan", "Task": "data.tasks", "load_task": "data.tasks",
            "MopeError": "errors", "evaluate": "evaluate", "Clip": "clip", "load_model": "models",
            "prune_model": "pipeline", "save_pruned": "pruned", "Cancelled": "scoring",
            "baseline_correlations": "scoring", "load_scores": "scoring", "save_scores": "scoring",
            "score": "scoring", "prune": "surgery", "units": None}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mope' has no attribute '{name}'")
    module = _EXPORTS[name]
    value = import_module(f".{name}", __name__) if module is None else getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            return  # importing the submodule mope.plan / mope.evaluate leaves the function under that name
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
