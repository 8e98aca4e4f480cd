"""MoPE-CLIP Explorer: score, prune and distill CLIP models with the Module-wise Pruning Error.

The names below load on first use, so `import mope.jobs` (the worker, the CLI's job commands) starts without
torch. `mope.plan` and `mope.evaluate` are functions; their modules are `mope.planning` and `mope.evaluation`
(no module shares a name with a function exported here).
"""
from __future__ import annotations

from importlib import import_module

_EXPORTS = {"Budget": "planning", "Plan": "planning", "plan": "planning", "Task": "data.tasks",
            "load_task": "data.tasks", "MopeError": "errors", "evaluate": "evaluation", "Clip": "clip", "load_model": "models",
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
