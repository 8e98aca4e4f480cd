from pathlib import Path

import torch

from mope import settings


def test_home_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MOPE_HOME", str(tmp_path))
    assert settings.mope_home() == tmp_path
    assert settings.jobs_dir() == tmp_path / "jobs" and settings.data_dir() == tmp_path / "data"
    assert settings.results_dir() == tmp_path / "results" and settings.models_dir() == tmp_path / "models"
    monkeypatch.delenv("MOPE_HOME")
    assert settings.mope_home() == Path.home() / ".cache" / "mope"
    monkeypatch.setenv("MOPE_HOME", "~0/mope")  # ~user of no such user: a plain path, not a traceback
    assert settings.mope_home() == Path("~0/mope")


def test_default_device():
    assert settings.default_device("cpu") == torch.device("cpu")
    assert settings.default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
