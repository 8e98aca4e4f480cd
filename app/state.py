"""What one app process holds: the folders it may read, the job and session stores, and bounded caches.

Importing this module loads neither torch nor open_clip (the page is served before they load): the job
store and the library come in at the first use.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TypeVar

from .session import SessionStore

T = TypeVar("T")


class Memo:
    """A bounded least-recently-used cache; a value asked for by two threads at once is made once."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()
        self._making: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        """The value under `key`, made by `make()` when missing (others asking meanwhile wait for it)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            making = self._making.setdefault(key, threading.Lock())
        with making:
            with self._lock:
                if key in self._items:  # made by the thread this one waited for
                    self._items.move_to_end(key)
                    return self._items[key]
            try:
                value = make()
                with self._lock:
                    self._items[key] = value
                    while len(self._items) > self.size:
                        self._items.popitem(last=False)
            finally:
                with self._lock:
                    self._making.pop(key, None)
        return value

    def put(self, key: Hashable, value) -> None:
        """Keep `value` under `key` (replacing what was there), the least recently used going first."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def peek(self, key: Hashable, default=None):
        """The value under `key`, or `default`; makes nothing."""
        with self._lock:
            return self._items.get(key, default)

    def __len__(self) -> int:
        return len(self._items)


class AppState:
    """One app instance: allowed folders (resolved), its home, stores and caches.

    Local models load only from `model_dirs` (plus HOME/models and the shipped demo); server-side data
    only from `data_dirs` (plus HOME/uploads); uploaded files only from `upload_dirs` (Gradio's upload
    folder and HOME/samples). Everything is written under `home`.
    """

    def __init__(self, home: str | Path | None = None, model_dirs=(), data_dirs=(), upload_dirs=None,
                 start_worker: bool = True, upload_quota: int | None = None):
        if home is None:
            from mope.settings import mope_home

            home = mope_home()
        self.home = Path(home).expanduser().resolve()
        self.saved_dir = self.home / "models"
        self.model_dirs = _resolved([self.saved_dir, *model_dirs])
        self.data_dirs = _resolved([self.home / "uploads", *data_dirs])
        self.upload_dirs = _resolved([self.home / "samples", *(_gradio_uploads() if upload_dirs is None
                                                              else upload_dirs)])
        self.start_worker = start_worker
        self.upload_quota = upload_quota
        self.sessions = SessionStore(self.home / "sessions")
        self.models = Memo(4)        # spec → Clip
        self.cards = Memo(16)        # spec@device → (headline, table)
        self.scores = Memo(32)       # scores CSV path → table
        self.skeletons = Memo(8)     # (spec, device, towers, kinds) → unit table of a running score job
        self.figures = Memo(256)     # (page connection, plot name) → the figure last drawn there, for its PNG
        self._store = None
        self._store_lock = threading.Lock()

    def store(self):
        """The job store under HOME/jobs, opened once."""
        with self._store_lock:
            if self._store is None:
                from mope.jobs import Store

                self._store = Store(self.home / "jobs")
            return self._store


def _resolved(paths) -> list[Path]:
    return list(dict.fromkeys(Path(p).expanduser().resolve() for p in paths))


def _gradio_uploads() -> list[Path]:
    from gradio.utils import get_upload_folder

    return [Path(get_upload_folder())]
