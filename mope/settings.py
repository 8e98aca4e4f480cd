"""Where mope keeps its files and what it runs on: the one place that reads $MOPE_HOME.

Everything mope writes lives under `mope_home()`: caches (diskcache folders named by what they hold),
`jobs/`, `results/` (score and study tables), `models/` (models saved by the app), `uploads/` and
`data/` (downloaded datasets). Torch is imported only when a device is asked for, so the app can read
these paths before it loads torch.
"""
from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "MOPE_HOME"
DEFAULT_HOME = "~/.cache/mope"
DEMO_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo-clip"


def mope_home() -> Path:
    """Data folder for caches, jobs, results and saved models: $MOPE_HOME, default ~/.cache/mope."""
    return user_path(os.environ.get(HOME_ENV) or DEFAULT_HOME)


def user_path(path: str | os.PathLike) -> Path:
    """The path with a leading ~ / ~user expanded; left as typed when there is no such user (`~0`: pathlib
    raises RuntimeError, which the fuzzing of the CLI found), so it is then simply a path that does not exist."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        return Path(path)



def data_dir() -> Path:
    """Where downloaded datasets (CIFAR) are kept."""
    return mope_home() / "data"


def jobs_dir() -> Path:
    return mope_home() / "jobs"


def results_dir() -> Path:
    """Score and study tables written by jobs."""
    return mope_home() / "results"


def models_dir() -> Path:
    """Models saved by the app."""
    return mope_home() / "models"


def default_device(device=None):
    """`device` as a torch.device; None means CUDA when available, else CPU."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
