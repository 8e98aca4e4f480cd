"""Atomic writes under a full disk: one MopeError saying what to free, the old file intact, no temporary left."""
import errno
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import torch

import mope
from mope import io
from mope.jobs import Store


def _enospc(*a, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")


def _safetensors_full(tensors, path, metadata=None):
    from safetensors import SafetensorError

    Path(path).write_bytes(b"partial")
    raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")


def _torch_full(obj, path, *a, **kw):
    Path(path).write_bytes(b"partial")
    raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")


@pytest.mark.parametrize("save, patch, full", [
    (lambda p: io.atomic_write_text(p, "new"), "builtins.open", None),
    (lambda p: io.atomic_save_safetensors({"w": torch.ones(2)}, p), "safetensors.torch.save_file", _safetensors_full),
    (lambda p: io.atomic_torch_save({"w": torch.ones(2)}, p), "torch.save", _torch_full),
])
def test_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, save, patch, full):
    target = tmp_path / "result"
    target.write_text("old")
    if full is None:  # text: the write itself fails
        real_open = open
        monkeypatch.setattr(patch, lambda f, mode="r", *a, **k: _enospc() if "w" in mode else real_open(f, mode, *a, **k))
    else:
        monkeypatch.setattr(patch, full)
    with pytest.raises(mope.MopeError) as e:
        save(target)
    message = str(e.value)
    assert "\n" not in message and "free disk space" in message and "MB free there" in message
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["result"]


def test_a_pruned_model_that_does_not_fit_leaves_no_folder(tiny_dir, tmp_path, monkeypatch):
    from mope.planning import Budget
    from mope.scoring import unit_table

    clip = mope.load_model(str(tiny_dir), device="cpu")
    pruned = mope.prune(clip, mope.plan(unit_table(clip), Budget(keep=0.5), by="magnitude"))
    monkeypatch.setattr("safetensors.torch.save_file", _safetensors_full)
    with pytest.raises(mope.MopeError, match="free disk space") as e:
        mope.save_pruned(pruned, tmp_path / "small")
    assert list(tmp_path.iterdir()) == []
    assert f"could not write {tmp_path / 'small'}/" in str(e.value) and ".tmp" not in str(e.value)


def test_scores_that_do_not_fit_leave_the_previous_table(tmp_path, monkeypatch):
    path = tmp_path / "scores.csv"
    path.write_text("previous")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, mode="r", *a, **k: _enospc() if "w" in mode else real_open(f, mode, *a, **k))
    with pytest.raises(mope.MopeError, match="free disk space"):
        mope.save_scores(pd.DataFrame({"tower": ["vision"]}), path)
    monkeypatch.undo()
    assert path.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


def test_a_full_disk_under_the_job_store_says_so_and_keeps_the_store(tmp_path, monkeypatch):
    store = Store(tmp_path / "jobs")
    kept = store.submit("ping")

    def full(*a, **kw):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store.cache, "push", full)
    with pytest.raises(mope.MopeError, match="is full: could not write .* free disk space .*store and its jobs are intact"):
        store.submit("ping")
    monkeypatch.undo()
    assert [j["id"] for j in Store(tmp_path / "jobs").jobs()] == [kept]


def test_a_store_that_cannot_be_written_is_not_called_unreadable(tmp_path, monkeypatch):
    """On a really full disk sqlite often says 'disk I/O error' (seen on a full 1 MB tmpfs): still not 'unreadable'."""
    import diskcache

    def io_error(*a, **kw):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(diskcache.Cache, "get", io_error)
    with pytest.raises(mope.MopeError) as e:
        Store(tmp_path / "jobs")
    assert "unreadable" not in str(e.value) and "free disk space" in str(e.value) and "intact" in str(e.value)
