"""Server-side sessions: the browser keeps only an opaque id; what it stands for lives under HOME/sessions.

A session holds a person's model spec, scores file and job ids. An id the store does not know (forged,
expired, or from another home) gets a fresh, empty session under a new id, never an error. Values are
written in a transaction, field by field, so two events of one page never undo each other's changes.
"""
from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import diskcache

NEW_SESSION = {"spec": "demo", "scores": None, "score_job": None, "pd_job": None, "study_job": None,
               "score_settings": None,  # what the session's scores were computed from (data, images, towers, metric)
               "controls": {}}          # the page's settings (budget, steps, name, compare selection) across reloads
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
LIFETIME_S = 30 * 24 * 3600  # a session not written for 30 days is forgotten


class SessionStore:
    """Sessions by id in a diskcache Cache (SQLite: safe across threads and processes)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.cache = diskcache.Cache(str(self.root), eviction_policy="none", size_limit=2**30)

    def open(self, session_id: object) -> tuple[str, dict]:
        """(id, session) for what the browser sent; anything unknown becomes a new, empty, stored session."""
        if isinstance(session_id, str) and ID_PATTERN.fullmatch(session_id):
            found = self.cache.get(_key(session_id))
            if isinstance(found, dict):
                return session_id, {**NEW_SESSION, **found}
        session_id = secrets.token_urlsafe(32)
        self.cache.set(_key(session_id), dict(NEW_SESSION), expire=LIFETIME_S)
        return session_id, dict(NEW_SESSION)

    def save(self, session_id: str, after: dict, before: dict) -> None:
        """Write the fields that changed from `before` to `after` (others' concurrent changes stay)."""
        changed = {k: after[k] for k in NEW_SESSION if after.get(k) != before.get(k)}
        if not changed:
            return
        with self.cache.transact():
            current = self.cache.get(_key(session_id)) or dict(NEW_SESSION)
            self.cache.set(_key(session_id), {**current, **changed}, expire=LIFETIME_S)


def _key(session_id: str) -> str:
    return f"session:{session_id}"


def browser_secret(home: Path) -> str:
    """The key gr.BrowserState encrypts the id with, kept under HOME so a restarted app still reads it."""
    path = Path(home) / "sessions" / "browser-secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        tmp.write_text(secrets.token_urlsafe(32))
        tmp.chmod(0o600)
        try:
            os.link(tmp, path)  # atomic: of two processes starting at once, one secret wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()
