"""Jobs as the page shows them: status lines, cancel, resume, the jobs table; starting the worker."""
from __future__ import annotations

import time

import pandas as pd

from mope.errors import MopeError
from mope.jobs import Store, ensure_worker
from mope.progress import progress_text

from ..state import AppState


def submit(state: AppState, kind: str, params: dict) -> str:
    """Queue a job and make sure a worker runs it; returns the job id."""
    store = state.store()
    job = store.submit(kind, params)
    if state.start_worker:
        ensure_worker(store, idle_exit=600)
    return job


def job_or_none(store: Store, job_id: str) -> dict | None:
    try:
        return store.get(job_id)
    except MopeError:
        return None


def signature(job_id: str | None, state: AppState):
    """What changes when a job moves: status, step, points drawn (the timer redraws only when it changes)."""
    if not job_id:
        return None
    job = job_or_none(state.store(), job_id)
    if job is None:
        return (job_id, "gone")
    return (job_id, job["status"], job["progress"].get("step"), len(job["partial"]), len(job["curve"]),
            len(job["history"]))


def progress_line(job: dict, store: Store | None = None) -> str:
    p = job["progress"]
    if job["status"] == "queued":
        return f"Job {job['id']} ({job['kind']}) is queued — {waiting_for(job, store)}."
    if not p:
        return f"Job {job['id']} ({job['kind']}) is running — loading the model and the data."
    label = f"Job {job['id']} ({job['kind']}): "
    return f"{progress_text(p['step'], p['total'], p.get('eta'), label)} — {p.get('message', '')}"


def waiting_for(job: dict, store: Store | None) -> str:
    """What a queued job waits for: the worker process to start, or the jobs ahead of it."""
    if store is None:
        return "waiting for the worker"
    if not store.live_workers():
        return ("the worker process is starting (it imports torch and loads the model: up to about half a minute "
                "on a small CPU)")
    ahead = [j for j in store.jobs() if j["status"] in ("queued", "running") and j["created"] < job["created"]]
    if ahead:
        return f"waiting for {len(ahead)} job{'s' * (len(ahead) > 1)} ahead of it ({', '.join(j['kind'] for j in ahead)})"
    return "the worker is picking it up"


ENDED = {"done": "finished", "cancelled": "was cancelled", "failed": "failed"}


def ended_line(job: dict) -> str:
    if job["status"] == "failed":
        return f"Job {job['id']} ({job['kind']}) failed: {job['error']}"
    return f"Job {job['id']} ({job['kind']}) {ENDED.get(job['status'], job['status'])}."


def job_state(job_id: str | None, state: AppState) -> tuple[str, list[dict], list[dict], dict | None]:
    """(status line, loss curve, eval history, result) of a job."""
    if not job_id:
        return "No job started from this browser yet.", [], [], None
    job = job_or_none(state.store(), job_id)
    if job is None:
        return f"Job {job_id} is gone from the job store.", [], [], None
    line = progress_line(job, state.store()) if job["status"] in ("queued", "running") else ended_line(job)
    if job["status"] == "done" and job["result"]:
        line += f" Saved: {job['result'].get('model', '')}"
    return line, job["curve"], job["history"], job["result"]


def cancel(job_id: str | None, state: AppState) -> str:
    if not job_id:
        raise MopeError("no job to cancel")
    state.store().cancel(job_id)
    return f"Cancel requested for job {job_id}: it stops at its next step and keeps its last checkpoint."


def resume(job_id: str | None, state: AppState) -> tuple[str, str]:
    """(new job id, message) continuing a failed or cancelled distillation from its checkpoint."""
    if not job_id:
        raise MopeError("no job to resume")
    store = state.store()
    new = store.resume(job_id)
    if state.start_worker:
        ensure_worker(store, idle_exit=600)
    return new, f"Resumed as job {new}, from the last checkpoint of {job_id}."


def jobs_table(state: AppState) -> pd.DataFrame:
    rows = []
    for job in reversed(state.store().jobs()):
        p = job["progress"]
        rows.append({"job": job["id"], "kind": job["kind"], "status": job["status"],
                     "progress": f"{p['step']}/{p['total']}" if p else "",
                     "model": job["params"].get("model") or job["params"].get("student", ""),
                     "started": time.strftime("%H:%M:%S", time.localtime(job["created"])),
                     "result / error": job["error"] or str((job["result"] or {}).get("model", ""))})
    return pd.DataFrame(rows, columns=["job", "kind", "status", "progress", "model", "started", "result / error"])
