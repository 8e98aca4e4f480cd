"""Background jobs: a store on diskcache and a worker process that runs library functions.

A job is a dict: id, kind, params, status (queued → running → done | failed | cancelled), progress
(step, total, message, eta), history (eval metrics over time), curve (training losses over steps),
partial (result rows so far, e.g. the units scored), log (last lines), result, timestamps,
error, worker (pid running it), cancel (requested). The store is one diskcache Cache under
$MOPE_HOME/jobs (eviction off: nothing vanishes). Workers claim jobs inside a transaction, so two
workers never run the same job; a worker that dies leaves its jobs `running` under a dead pid, and
the next look at the store (any worker, the CLI, the app) marks them failed with the reason.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import diskcache

from .errors import MopeError
from .settings import jobs_dir

STATUSES = ("queued", "running", "done", "failed", "cancelled")
LOG_LINES = 200
CURVE_POINTS = 5000

# kind → (required params, optional params with defaults)
KINDS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "ping": ((), {"seconds": 0.0}),
    "evaluate": (("model",), {"data": "shapes", "task": None, "n": 500, "device": None}),
    "score": (("model",), {"data": "shapes", "task": None, "n": 256, "towers": ["vision", "text"],
                           "units": ["head", "neurons", "layer"], "metric": None, "device": None}),
    "study": (("model", "scores"), {"data": "shapes", "n": 500, "removed": [0.25, 0.5, 0.75],
                                    "rankings": ["mope", "magnitude", "random"], "towers": ["vision"], "device": None,
                                    "iterative": [], "calibration": None, "calibration_n": 256}),
    "prune": (("model", "out"), {"scores": None, "budget": None, "by": "mope", "keep": 0.5, "towers": ["vision"],
                                 "strategy": "uniform", "layers": 0, "iterative": 1, "step_schedule": "even",
                                 "data": "shapes", "n": 256, "device": None}),
    "distill": (("teacher", "student", "out"), {"data": "shapes", "steps": 500, "batch_size": 64, "lr": 5e-4,
                                                "eval_data": "shapes", "eval_n": 500, "eval_every": 100,
                                                "resume": False, "device": None}),
    "prune-and-distill": (("model", "out"), {"scores": None, "budget": None, "by": "mope", "keep": 0.5,
                                             "towers": ["vision"], "strategy": "uniform", "layers": 0,
                                             "iterative": 1, "step_schedule": "even",
                                             "data": "shapes", "n": 256, "distill_data": "shapes",
                                             "eval_data": "shapes", "eval_n": 500, "eval_every": 100, "steps": 500,
                                             "batch_size": 64, "lr": 5e-4, "resume": False, "device": None}),
    "export": (("model", "out"), {"format": "onnx"}),
}


class Store:
    """The job store. Safe across threads and processes (SQLite underneath, writes in transactions)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else jobs_dir()
        try:
            self.cache = diskcache.Cache(str(self.root), eviction_policy="none", size_limit=2**40, timeout=60)
            self.cache.get("__probe__")
        except Exception as e:  # sqlite3.DatabaseError and friends
            raise MopeError(f"the job store at {self.root} is unreadable ({e}); move it aside to start a new one "
                            "(nothing was reset)") from None

    def close(self) -> None:
        self.cache.close()

    # --- records -------------------------------------------------------------------------------------

    def submit(self, kind: str, params: dict | None = None) -> str:
        params = validate(kind, params or {})
        job_id = uuid.uuid4().hex[:12]
        job = {"id": job_id, "kind": kind, "params": params, "status": "queued", "progress": {},
               "history": [], "curve": [], "partial": [], "log": [], "result": None, "error": None, "worker": None, "cancel": False,
               "created": time.time(), "started": None, "finished": None}
        with self.cache.transact():
            self.cache.set(f"job:{job_id}", job)
            self.cache.push(job_id, prefix="queue")
        return job_id

    def get(self, job_id: str) -> dict:
        job = self.cache.get(f"job:{job_id}")
        if job is None:
            raise MopeError(f"no job {job_id}; 'python -m mope jobs list' shows the jobs")
        return job

    def update(self, job_id: str, **changes) -> dict:
        with self.cache.transact():
            job = self.get(job_id)
            job.update(changes)
            self.cache.set(f"job:{job_id}", job)
        return job

    def append(self, job_id: str, field: str, item, limit: int | None = None) -> None:
        self.extend(job_id, field, [item], limit)

    def extend(self, job_id: str, field: str, items: list, limit: int | None = None) -> None:
        with self.cache.transact():
            job = self.get(job_id)
            job[field] = (job[field] + items)[-limit:] if limit else job[field] + items
            self.cache.set(f"job:{job_id}", job)

    def jobs(self) -> list[dict]:
        self.reap()
        found = [self.cache.get(k) for k in self.cache.iterkeys() if isinstance(k, str) and k.startswith("job:")]
        return sorted((j for j in found if j), key=lambda j: j["created"])

    def cancel(self, job_id: str) -> dict:
        job = self.get(job_id)
        if job["status"] == "queued":
            return self.update(job_id, status="cancelled", finished=time.time(), cancel=True)
        if job["status"] == "running":
            return self.update(job_id, cancel=True)
        raise MopeError(f"job {job_id} is already {job['status']}")

    def resume(self, job_id: str) -> str:
        """A new job continuing a failed or cancelled distillation from its last checkpoint."""
        job = self.get(job_id)
        if job["kind"] not in ("distill", "prune-and-distill") or job["status"] not in ("failed", "cancelled"):
            raise MopeError(f"only a failed or cancelled distillation can be resumed; job {job_id} is a "
                            f"{job['status']} {job['kind']} job")
        if job["started"] is None:
            raise MopeError(f"job {job_id} was cancelled before it started: nothing to resume, start a new one")
        return self.submit(job["kind"], {**job["params"], "resume": True})

    # --- claiming, liveness --------------------------------------------------------------------------

    def claim(self, worker: int) -> dict | None:
        """The oldest queued job, now running under `worker`; None when the queue is empty."""
        while True:
            with self.cache.transact():
                _, job_id = self.cache.pull(prefix="queue")
                if job_id is None:
                    return None
                job = self.cache.get(f"job:{job_id}")
                if job is None or job["status"] != "queued":
                    continue  # cancelled while queued
                job.update(status="running", worker=worker, started=time.time())
                self.cache.set(f"job:{job_id}", job)
                return job

    def heartbeat(self, worker: int) -> None:
        self.cache.set(f"worker:{worker}", time.time(), expire=30)

    def live_workers(self) -> list[int]:
        return [int(k.split(":")[1]) for k in self.cache.iterkeys()
                if isinstance(k, str) and k.startswith("worker:") and self.cache.get(k) is not None]

    def reap(self) -> None:
        """Jobs running under a worker that is gone become failed, with the reason."""
        for key in list(self.cache.iterkeys()):
            if not (isinstance(key, str) and key.startswith("job:")):
                continue
            job = self.cache.get(key)
            if job and job["status"] == "running" and not _alive(job["worker"]):
                with self.cache.transact():
                    job = self.cache.get(key)
                    if job["status"] == "running" and not _alive(job["worker"]):
                        job.update(status="failed", finished=time.time(),
                                   error=f"the worker (pid {job['worker']}) died while running this job"
                                         + ("; resume it to continue from its last checkpoint"
                                            if job["kind"] in ("distill", "prune-and-distill") else ""))
                        self.cache.set(key, job)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def validate(kind: str, params: dict) -> dict:
    """Params with defaults filled in; a clear error for an unknown kind, a missing or an unknown param."""
    if kind not in KINDS:
        raise MopeError(f"unknown job kind '{kind}'; use one of {', '.join(KINDS)}")
    required, optional = KINDS[kind]
    missing = [k for k in required if k not in params]
    unknown = [k for k in params if k not in required and k not in optional]
    if missing or unknown:
        raise MopeError(f"a {kind} job needs {', '.join(required) or 'no params'}"
                        + (f" (missing: {', '.join(missing)})" if missing else "")
                        + (f"; unknown params: {', '.join(unknown)}" if unknown else "")
                        + f"; optional: {', '.join(optional) or 'none'}")
    for name, default in optional.items():
        if name in params and default is not None and params[name] is not None:
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                try:
                    params[name] = type(default)(params[name])
                except (TypeError, ValueError):
                    raise MopeError(f"param {name} of a {kind} job must be a number, got {params[name]!r}") from None
    return {**optional, **params}


# --- running ---------------------------------------------------------------------------------------------

class JobContext:
    """What a running job reports through: progress, metrics, log lines; and whether to stop."""

    def __init__(self, store: Store, job_id: str):
        self.store, self.job_id, self._last_poll, self._cancel = store, job_id, 0.0, False
        self._curve: list[dict] = []
        self._curve_written = time.time()

    def progress(self, step: int, total: int, eta: float | None = None, message: str = "") -> None:
        self.store.update(self.job_id, progress={"step": step, "total": total, "eta": eta, "message": message})

    def metrics(self, item: dict) -> None:
        self.store.append(self.job_id, "history", item)

    def curve(self, item: dict) -> None:
        """One point of a training curve; points reach the store at most every half second (and at the end)."""
        self._curve.append(item)
        if time.time() - self._curve_written > 0.5:
            self.flush()

    def flush(self) -> None:
        if self._curve:
            self.store.extend(self.job_id, "curve", self._curve, limit=CURVE_POINTS)
        self._curve, self._curve_written = [], time.time()

    def partial(self, rows: list[dict]) -> None:
        self.store.update(self.job_id, partial=rows)

    def log(self, line: str) -> None:
        self.store.append(self.job_id, "log", f"{time.strftime('%H:%M:%S')} {line}", limit=LOG_LINES)

    def should_stop(self) -> bool:
        if time.time() - self._last_poll > 0.2:
            self._last_poll = time.time()
            self._cancel = self.store.get(self.job_id)["cancel"]
        return self._cancel


_GPU = threading.Lock()  # GPU jobs run one at a time


def _uses_gpu(params: dict) -> bool:
    import torch

    device = params.get("device")
    return (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")


def run_job(store: Store, job: dict) -> None:
    """Run one claimed job to its end, recording the outcome."""
    from contextlib import nullcontext

    from .runners import RUNNERS

    ctx = JobContext(store, job["id"])
    ctx.log(f"{job['kind']} started")
    try:
        with _GPU if job["kind"] != "ping" and _uses_gpu(job["params"]) else nullcontext():
            try:
                result = RUNNERS[job["kind"]](job["params"], ctx)
            finally:
                ctx.flush()  # the whole curve is in the store before the job shows as ended
        status = "cancelled" if ctx.should_stop() or store.get(job["id"])["cancel"] else "done"
        store.update(job["id"], status=status, result=result, finished=time.time())
        ctx.log(status)
    except Exception as e:  # every failure is recorded on the job, the worker goes on
        from .scoring import Cancelled

        if isinstance(e, Cancelled):
            store.update(job["id"], status="cancelled", finished=time.time())
            return
        message = str(e) if isinstance(e, MopeError) else f"{type(e).__name__}: {e}"
        store.update(job["id"], status="failed", error=message, finished=time.time())
        ctx.log("failed: " + (message if isinstance(e, MopeError) else traceback.format_exc(limit=3)))


def work(store: Store, concurrency: int = 1, idle_exit: float | None = None, poll: float = 0.2) -> None:
    """The worker loop: claim and run jobs on `concurrency` threads; exit after idle_exit idle seconds."""
    pid = os.getpid()
    store.reap()
    idle_since = time.time()
    running: list[threading.Thread] = []
    while True:
        store.heartbeat(pid)
        running = [t for t in running if t.is_alive()]
        if len(running) < concurrency:
            job = store.claim(pid)
            if job is not None:
                thread = threading.Thread(target=run_job, args=(store, job), daemon=True)
                thread.start()
                running.append(thread)
                idle_since = time.time()
                continue
        if running:
            idle_since = time.time()
        elif idle_exit is not None and time.time() - idle_since > idle_exit:
            return
        time.sleep(poll)


def ensure_worker(store: Store, concurrency: int = 1, idle_exit: float = 60.0) -> int | None:
    """Start a background worker unless one is alive; returns the new worker's pid."""
    if store.live_workers():
        return None
    with open(store.root / "worker.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mope", "worker", "--concurrency", str(concurrency),
                                 "--idle-exit", str(idle_exit)], stdout=log, stderr=log, start_new_session=True,
                                env={**os.environ, "MOPE_HOME": str(store.root.parent)})
    return proc.pid
