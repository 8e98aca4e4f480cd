"""Atomic writes: write to a temporary file beside the target, then rename over it.

A write that fails (disk full, no permission, a read-only disk), whichever library raised it (OSError,
safetensors' SafetensorError, torch.save's RuntimeError), leaves the target as it was, removes its temporary
file and raises one MopeError saying what to free.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import MopeError


def atomic_write(path: Path, write) -> None:
    """Call write(temporary path), then rename the file over `path`."""
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except _write_errors() as e:
        raise write_failed(path, e) from None
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


def _write_errors() -> tuple[type[Exception], ...]:
    """What a failed write raises: OSError, safetensors' SafetensorError, torch.save's RuntimeError."""
    from safetensors import SafetensorError

    return (OSError, RuntimeError, SafetensorError)


def write_failed(path: Path, error: Exception) -> MopeError:
    """One line: what could not be written, why, and how much room is left where it goes."""
    reason = (error.strerror if isinstance(error, OSError) and error.strerror else str(error)).splitlines()[0][:200]
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:,.0f} MB free there"
    except OSError:
        free = "free space unknown"
    return MopeError(f"could not write {path} ({reason}); free disk space on the disk holding {folder} ({free}) or "
                     "choose another place — nothing that was there before was changed")


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_safetensors(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file  # here, not above: the job worker starts without torch

    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save of tensors and plain containers (loadable with weights_only=True)."""
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


@contextmanager
def atomic_folder(folder: Path):
    """Yield a temporary folder beside `folder`; renamed to `folder` when the block ends without an error,
    removed otherwise (nothing partial is left behind). The caller checks that `folder` does not exist."""
    folder, tmp = Path(folder), None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders; give the usual permissions
        tmp.rename(folder)
    except OSError as e:
        raise write_failed(folder, e) from None
    except MopeError as e:  # a write inside failed: name the folder asked for, not its temporary twin
        raise MopeError(str(e).replace(str(tmp), str(folder))) from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp)


def _umask() -> int:
    """The process umask, read without setting it (os.umask would race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022
