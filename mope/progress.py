"""Progress of long work, in one place for the library, the CLI and the app: the time left from the pace so
far, and the text bar a page shows (tqdm draws it; the CLI's bars are tqdm's own)."""
from __future__ import annotations

import time

from tqdm import tqdm


class TimeLeft:
    """Seconds left for the rest of `total` items at the pace since this was made (None before the first)."""

    def __init__(self):
        self.start = time.time()

    def __call__(self, done: int, total: int) -> float | None:
        if done <= 0:
            return None
        return (time.time() - self.start) / done * (total - done)


def progress_text(done: int, total: int, eta: float | None = None, label: str = "", width: int = 20) -> str:
    """`████░░░░` {label}3/8, about 12 s left — a bar of `width` characters, the count and the time left."""
    bar = tqdm.format_meter(done, max(total, 1), 0, bar_format=f"{{bar:{width}}}", ascii="░█")
    left = f", about {eta:.0f} s left" if eta is not None else ""
    return f"`{bar}` {label}{done}/{total}{left}"
