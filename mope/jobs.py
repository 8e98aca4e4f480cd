"""Background jobs: a store on diskcache and a worker process that runs library functions.

A job is a dict: id, kind, params, status (queued → running → done | failed | cancelled), progress
(step, total, message, eta), history (eval metrics over time), curve (training losses over steps),
partial (result rows so far, e.g. the units scored; kept in append-only chunks beside the record and
joined by get() / jobs()), log (last lines), result, timestamps,
error, worker (pid running it) and worker_start (that process's start time), cancel (requested).
The store is one diskcache Cache under $MOPE_HOME/jobs (eviction off: nothing vanishes).

One worker per store: the worker holds an exclusive flock on `jobs/worker.lock` for as long as it lives
(the kernel lets go when it dies, however it dies). `ensure_worker` takes that lock itself and hands it to
the worker it starts, so of many near-simultaneous submissions exactly one starts a worker. A worker that
exits idle lets go of the lock first and then looks at the queue once more, so a job submitted meanwhile
is never stranded. Jobs claimed by a worker that died (its pid gone, or reused by another process: the
start time differs) are marked failed with the reason at the next look at the store. GPU jobs take a
machine-wide lock (a flock in the system's temporary folder), so one job at a time uses a GPU across every
worker and store on the machine.
"""
from __future__ import annotations

import errno
import fcntl
import functools
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import diskcache

from .errors import MopeError
from .io import atomic_write_json, write_failed
from .settings import jobs_dir
from .validate import job_params

STATUSES = ("queued", "running", "done", "failed", "cancelled")
LOG_LINES = 200
CURVE_POINTS = 5000
LOCK_DIR = Path(tempfile.gettempdir())  # machine-wide: the GPU locks live here
WORKER_LOCK_FD = "MOPE_WORKER_LOCK_FD"  # the inherited, already locked worker.lock of a started worker

_PLAIN_JOB_KINDS = {"ping": ((), {"seconds": 0.0}), "export": (("model", "out"), {"format": "onnx"})}  # no library defaults


@functools.cache
def job_kinds() -> dict[str, tuple[tuple[str, ...], dict[str, Any]]]:
    """job kind → (required params, optional params with defaults); the defaults are the library's (mope.defaults).

    Built on first use (also as `jobs.JOB_KINDS`): reading the library's defaults imports torch, which a
    worker starting up should not wait for.
    """
    from . import defaults

    _SCORE, _PRUNE, _STUDY, _DISTILL = defaults.score(), defaults.prune(), defaults.study(), defaults.distill()
    _PRUNING = {"scores": None, "budget": None, "by": _PRUNE["by"], "keep": defaults.KEEP, "towers": list(_PRUNE["towers"]),
                "strategy": _PRUNE["strategy"], "layers": 0, "iterative": _PRUNE["steps"],
                "step_schedule": _PRUNE["step_schedule"], "rescore_margin": _PRUNE["rescore_margin"],
                "rescore_images": _PRUNE["rescore_images"],
                "data": defaults.DATA, "task": None, "n": defaults.CALIBRATION_N}
    _DISTILLING = {"steps": _DISTILL["steps"], "batch_size": _DISTILL["batch_size"], "lr": _DISTILL["lr"],
                   "eval_data": defaults.DATA, "eval_n": defaults.EVAL_N, "eval_every": _DISTILL["eval_every"],
                   "resume": False, "workers": _DISTILL["workers"]}
    return {
        **_PLAIN_JOB_KINDS,
        "evaluate": (("model",), {"data": defaults.DATA, "task": None, "n": defaults.EVAL_N, "device": None}),
        "score": (("model",), {"data": defaults.DATA, "task": None, "n": defaults.CALIBRATION_N,
                               "towers": list(_SCORE["towers"]), "units": list(_SCORE["units"]),
                               "metric": _SCORE["metric"], "device": None, "schedule": _SCORE["schedule"],
                               "first_table_seconds": _SCORE["first_table_seconds"]}),
        "study": (("model", "scores"), {"data": defaults.DATA, "n": defaults.EVAL_N, "removed": list(_STUDY["removed"]),
                                        "rankings": list(_STUDY["rankings"]), "towers": list(_STUDY["towers"]),
                                        "device": None, "iterative": list(_STUDY["iterative"]), "calibration": None,
                                        "calibration_n": defaults.CALIBRATION_N}),
        "prune": (("model", "out"), {**_PRUNING, "device": None}),
        "distill": (("teacher", "student", "out"), {"data": defaults.DATA, **_DISTILLING, "device": None}),
        "prune-and-distill": (("model", "out"), {**_PRUNING, "distill_data": defaults.DATA, **_DISTILLING,
                                                 "device": None}),
    }



def __getattr__(name: str):
    if name == "JOB_KINDS":
        return job_kinds()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

class Store:
    """The job store. Safe across threads and processes (SQLite underneath, writes in transactions)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else jobs_dir()
        self.unrecorded: dict[str, dict] = {}  # job id → how a job of this process ended, while the disk refuses it
        self._unrecorded_lock = threading.Lock()
        try:
            self.cache = diskcache.Cache(str(self.root), eviction_policy="none", size_limit=2**40, timeout=60)
            self.cache.get("__probe__")
        except Exception as e:  # sqlite3.DatabaseError and friends
            raise _store_error(self.root, e) from None

    def close(self) -> None:
        self.cache.close()

    # --- records -------------------------------------------------------------------------------------

    def submit(self, kind: str, params: dict | None = None) -> str:
        params = validate(kind, params or {})
        job_id = uuid.uuid4().hex[:12]
        job = {"id": job_id, "kind": kind, "params": params, "status": "queued", "progress": {},
               "history": [], "curve": [], "partial": [], "log": [], "result": None, "error": None, "worker": None, "cancel": False,
               "created": time.time(), "started": None, "finished": None}
        with self._writing():
            self.cache.set(f"job:{job_id}", job)
            self.cache.push(job_id, prefix="queue")
        return job_id

    @contextmanager
    def _writing(self):
        """One transaction: all of it is written or, on a full or read-only disk, none of it (the previous record
        stays) and one MopeError says what to free."""
        try:
            with self.cache.transact():
                yield
        except (sqlite3.OperationalError, OSError) as e:
            raise _store_error(self.root, e) from None

    def get(self, job_id: str) -> dict:
        """The job's record, with its partial rows."""
        return self._with_partial(self._record(job_id))

    def _record(self, job_id: str) -> dict:
        job = self.cache.get(f"job:{job_id}")
        if job is None:
            raise MopeError(f"no job {job_id}; 'python -m mope jobs list' shows the jobs")
        return job

    def _with_partial(self, job: dict) -> dict:
        """Partial rows are kept in append-only chunks beside the record (a chunk per report, never rewritten)."""
        chunks = [self.cache.get(f"partial:{job['id']}:{i}") or [] for i in range(job.get("partial_chunks", 0))]
        return {**job, "partial": job["partial"] + [row for chunk in chunks for row in chunk]}

    def add_partial(self, job_id: str, rows: list[dict]) -> None:
        """Append result rows to the job's partial rows (a new chunk; nothing stored is rewritten)."""
        with self._writing():
            job = self._record(job_id)
            n = job.get("partial_chunks", 0)
            self.cache.set(f"partial:{job_id}:{n}", rows)
            job["partial_chunks"] = n + 1
            self.cache.set(f"job:{job_id}", job)

    def set_partial(self, job_id: str, rows: list[dict]) -> None:
        """Replace the job's partial rows (one chunk)."""
        with self._writing():
            job = self._record(job_id)
            for i in range(1, job.get("partial_chunks", 0)):
                self.cache.delete(f"partial:{job_id}:{i}")
            self.cache.set(f"partial:{job_id}:0", list(rows))
            job["partial_chunks"] = 1
            self.cache.set(f"job:{job_id}", job)

    def update(self, job_id: str, **changes) -> dict:
        with self._writing():
            job = self._record(job_id)
            job.update(changes)
            self.cache.set(f"job:{job_id}", job)
        return job

    def append(self, job_id: str, field: str, item, limit: int | None = None) -> None:
        self.extend(job_id, field, [item], limit)

    def extend(self, job_id: str, field: str, items: list, limit: int | None = None) -> None:
        with self._writing():
            job = self._record(job_id)
            job[field] = (job[field] + items)[-limit:] if limit else job[field] + items
            self.cache.set(f"job:{job_id}", job)

    def jobs(self) -> list[dict]:
        """Every job (each record read once; a running job whose worker is gone is marked failed first)."""
        found = [self._reaped(j) for j in self._records()]
        return sorted((self._with_partial(j) for j in found), key=lambda j: j["created"])

    def _records(self) -> list[dict]:
        found = [self.cache.get(k) for k in list(self.cache.iterkeys()) if isinstance(k, str) and k.startswith("job:")]
        return [j for j in found if j]

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

    def claim(self, worker: int, worker_start: str | None = None) -> dict | None:
        """The oldest queued job, now running under pid `worker` (started at `worker_start`); None when none."""
        while True:
            with self._writing():
                _, job_id = self.cache.pull(prefix="queue")
                if job_id is None:
                    return None
                job = self.cache.get(f"job:{job_id}")
                if job is None or job["status"] != "queued":
                    continue  # cancelled while queued
                job.update(status="running", worker=worker, worker_start=worker_start, started=time.time())
                self.cache.set(f"job:{job_id}", job)
                return job

    def has_queued(self) -> bool:
        return self.cache.peek(prefix="queue")[0] is not None

    def live_workers(self) -> list[int]:
        """The pid of the worker serving this store, when one is alive (its lock held, its pid and start time
        as recorded); [] otherwise."""
        with _flocked(self.root / SPAWN_LOCK):
            fd = _try_flock(self.root / WORKER_LOCK)
            if fd is not None:
                os.close(fd)
                return []
        marker = _read_marker(self.root)
        return [marker["pid"]] if marker and _alive(marker["pid"], marker["start"]) else []

    def reap(self) -> None:
        """Jobs running under a worker that is gone become failed, with the reason."""
        for job in self._records():
            self._reaped(job)

    def _reaped(self, job: dict) -> dict:
        """The job; if it is running under a worker that is gone, now marked failed with the reason."""
        if job["status"] != "running" or _alive(job["worker"], job.get("worker_start")):
            return job
        key, seen = f"job:{job['id']}", job
        try:
            with self._writing():
                job = self.cache.get(key)
                if job["status"] == "running" and not _alive(job["worker"], job.get("worker_start")):
                    job.update(status="failed", finished=time.time(),
                               error=f"the worker (pid {job['worker']}) died while running this job"
                                     + ("; resume it to continue from its last checkpoint"
                                        if job["kind"] in ("distill", "prune-and-distill") else ""))
                    self.cache.set(key, job)
        except MopeError:  # a full disk: shown as it is stored, marked at a later look
            return seen
        return job

    # --- a job's end, kept in memory while the disk refuses it ---------------------------------------

    def record_end(self, job_id: str, **changes) -> bool:
        """Write how a job ended (status, error, result …); when the store cannot be written (a full disk), keep it
        in `unrecorded` and say so on stderr in one line: record_unrecorded() writes it once the disk has room.
        True when written."""
        try:
            self.update(job_id, **changes)
        except MopeError as e:
            with self._unrecorded_lock:
                self.unrecorded[job_id] = {**self.unrecorded.get(job_id, {}), **changes}
            _say(f"error: job {job_id} ended {changes.get('status')}, not yet recorded: {e}; retrying")
            return False
        with self._unrecorded_lock:
            self.unrecorded.pop(job_id, None)
        return True

    def record_unrecorded(self) -> None:
        """Try again to write the ends the disk refused (the worker calls it between jobs)."""
        with self._unrecorded_lock:
            pending = dict(self.unrecorded)
        for job_id, changes in pending.items():
            try:
                self.update(job_id, **changes)
            except MopeError:
                return  # still full: the next look tries again
            with self._unrecorded_lock:
                if self.unrecorded.get(job_id) == changes:
                    del self.unrecorded[job_id]


def _store_error(root: Path, error: Exception) -> MopeError:
    """A store that cannot be written (a full or read-only disk: sqlite says 'database or disk is full' or,
    as often, 'disk I/O error') is not a broken one: say which it is, with the room left, and that the store
    was left as it was. Only a file that is not a database is 'unreadable'."""
    if "locked" in str(error):
        return MopeError(f"the job store at {root} is busy ({error}); try again in a moment")
    if isinstance(error, (sqlite3.OperationalError, OSError)):
        full = "full" in str(error) or getattr(error, "errno", None) == errno.ENOSPC
        reason = write_failed(root / "cache.db", error)
        return MopeError(f"{'the disk holding the job store is full: ' if full else ''}{reason} (the store and its "
                         "jobs are intact)")
    return MopeError(f"the job store at {root} is unreadable ({error}); move it aside to start a new one "
                     "(nothing was reset)")


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat field 22): with the pid it names
    one process, even after the pid is reused. None when there is no such live process (or only a zombie);
    "" where there is no /proc to ask."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None if Path("/proc/self/stat").exists() else ""
    state, *fields = stat[stat.rindex(")") + 2:].split()
    return None if state == "Z" else fields[18]


def _alive(pid: int | None, start: str | None = None) -> bool:
    """Whether process `pid` lives (not a zombie) and, when `start` is given, is the one that started then."""
    if not pid:
        return False
    now = process_start(pid)
    return now is not None and (start is None or now == start)


# --- one worker per store, one job per GPU ---------------------------------------------------------------

WORKER_LOCK, SPAWN_LOCK, WORKER_MARKER = "worker.lock", "spawn.lock", "worker.json"


def _try_flock(path: Path) -> int | None:
    """A descriptor holding an exclusive flock on `path`, or None when another holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextmanager
def _flocked(path: Path):
    """A short critical section under an exclusive flock on `path` (waits for it)."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_marker(root: Path, pid: int) -> None:
    atomic_write_json(root / WORKER_MARKER, {"pid": pid, "start": process_start(pid)})


def _read_marker(root: Path) -> dict | None:
    import json

    try:
        marker = json.loads((root / WORKER_MARKER).read_text())
        return marker if isinstance(marker.get("pid"), int) else None
    except (OSError, ValueError, AttributeError):
        return None


class _WorkerLock:
    """The store's worker lock as held by this worker: taken (or inherited from ensure_worker), let go, retaken.
    Every taking happens under the spawn lock, so a look at the lock never blocks a worker from taking it."""

    def __init__(self, root: Path):
        self.root, self.fd = root, None

    def take(self) -> bool:
        inherited = os.environ.pop(WORKER_LOCK_FD, "")
        if inherited.isdigit() and _is_open(int(inherited)):
            self.fd = int(inherited)
        else:
            with _flocked(self.root / SPAWN_LOCK):
                self.fd = _try_flock(self.root / WORKER_LOCK)
        if self.fd is not None:
            _write_marker(self.root, os.getpid())
        return self.fd is not None

    def let_go(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


@contextmanager
def gpu_turn(device: str, should_stop, waiting=lambda: None):
    """Hold `device` (cuda, cuda:N) machine-wide while the block runs: a flock on a file in the system's
    temporary folder, so jobs of every worker, thread and store on this machine take turns. Yields True once
    held, or False when should_stop() said so while waiting; waiting() is called once if the GPU is busy."""
    index = device.partition(":")[2] or "0"
    path = LOCK_DIR / f"mope-gpu{index}.lock"
    fd = None
    try:
        while (fd := _try_flock(path)) is None:
            if waiting:
                waiting()
                waiting = None
            if should_stop():
                yield False
                return
            time.sleep(0.2)
        yield True
    finally:
        if fd is not None:
            os.close(fd)


def validate(kind: str, params: dict) -> dict:
    """Params with defaults filled in and checked (mope.validate: numbers in range, lists non-empty, specs
    parsed, paths usable); a clear error for an unknown kind, a missing, an unknown or a bad param."""
    if kind not in _PLAIN_JOB_KINDS and kind not in job_kinds():  # ping and export validate without importing torch
        raise MopeError(f"unknown job kind '{kind}'; use one of {', '.join(job_kinds())}")
    required, optional = _PLAIN_JOB_KINDS.get(kind) or job_kinds()[kind]
    missing = [k for k in required if k not in params]
    unknown = [k for k in params if k not in required and k not in optional]
    if missing or unknown:
        raise MopeError(f"a {kind} job needs {', '.join(required) or 'no params'}"
                        + (f" (missing: {', '.join(missing)})" if missing else "")
                        + (f"; unknown params: {', '.join(unknown)}" if unknown else "")
                        + f"; optional: {', '.join(optional) or 'none'}")
    return job_params(kind, {**optional, **params}, required)


# --- running ---------------------------------------------------------------------------------------------

class JobContext:
    """What a running job reports through: progress, metrics, log lines; and whether to stop."""

    def __init__(self, store: Store, job_id: str):
        self.store, self.job_id, self._last_poll, self._cancel = store, job_id, 0.0, False
        self._curve: list[dict] = []
        self._curve_written = time.time()
        self._partial_sent: list[dict] = []

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
        """The result rows so far. When they extend what was stored, only the new rows are appended; when
        earlier rows changed (anytime scoring refines its estimates), the stored rows are replaced."""
        n = len(self._partial_sent)
        if rows[:n] == self._partial_sent:
            if len(rows) > n:
                self.store.add_partial(self.job_id, rows[n:])
        else:
            self.store.set_partial(self.job_id, rows)
        self._partial_sent = [dict(r) for r in rows]  # copies: the caller may update its rows in place

    def log(self, line: str) -> None:
        self.store.append(self.job_id, "log", f"{time.strftime('%H:%M:%S')} {line}", limit=LOG_LINES)

    def should_stop(self) -> bool:
        if time.time() - self._last_poll > 0.2:
            self._last_poll = time.time()
            self._cancel = self.store._record(self.job_id)["cancel"]
        return self._cancel


def _gpu(job: dict) -> str | None:
    """The GPU a job would use (cuda, cuda:N), or None for a CPU job."""
    if job["kind"] == "ping":
        return None
    import torch

    device = job["params"].get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    return device if device.startswith("cuda") else None


def run_job(store: Store, job: dict) -> None:
    """Run one claimed job to its end, recording the outcome."""
    from .runners import RUNNERS

    ctx = JobContext(store, job["id"])
    try:
        ctx.log(f"{job['kind']} started")
        result = None
        with _device_turn(job, ctx) as ready:
            try:
                result = RUNNERS[job["kind"]](job["params"], ctx) if ready else None
            finally:
                ctx.flush()  # the whole curve is in the store before the job shows as ended
        status = "cancelled" if ctx.should_stop() or store._record(job["id"])["cancel"] else "done"
        if store.record_end(job["id"], status=status, result=result, finished=time.time()):
            _log_quietly(ctx, status)
    except Exception as e:  # every failure is recorded on the job, the worker goes on
        from .scoring import Cancelled

        if isinstance(e, Cancelled):
            store.record_end(job["id"], status="cancelled", finished=time.time())
            return
        message = str(e) if isinstance(e, MopeError) else f"{type(e).__name__}: {e}"
        if store.record_end(job["id"], status="failed", error=message, finished=time.time()):
            _log_quietly(ctx, "failed: " + (message if isinstance(e, MopeError) else traceback.format_exc(limit=3)))


def _log_quietly(ctx: JobContext, line: str) -> None:
    """A last log line, once the end is recorded: a full disk refusing it changes nothing (the end is stored)."""
    try:
        ctx.log(line)
    except MopeError:
        pass


@contextmanager
def _device_turn(job: dict, ctx: JobContext):
    """True once the job may run: at once on a CPU, after its turn on a GPU; False when cancelled waiting."""
    gpu = _gpu(job)
    if gpu is None:
        yield True
        return
    with gpu_turn(gpu, ctx.should_stop, lambda: ctx.log(f"waiting for {gpu}: another job on this machine uses it")) as ready:
        yield ready


def work(store: Store, concurrency: int = 1, idle_exit: float | None = None, poll: float = 0.2) -> None:
    """The worker loop: claim and run jobs on `concurrency` threads; exit after idle_exit idle seconds.

    Refuses to start while another worker serves the store (one worker per store)."""
    lock = _WorkerLock(store.root)
    if not lock.take():
        marker = _read_marker(store.root) or {}
        raise MopeError(f"a worker (pid {marker.get('pid', '?')}) already runs the jobs of {store.root}; it takes "
                        "new jobs as they come (use --concurrency for more at once)")
    try:
        _serve(store, lock, concurrency, idle_exit, poll)
    finally:
        lock.let_go()


def _serve(store: Store, lock: _WorkerLock, concurrency: int, idle_exit: float | None, poll: float) -> None:
    pid = os.getpid()
    start = process_start(pid)
    store.reap()
    idle_since = time.time()
    running: list[threading.Thread] = []
    while True:
        running = [t for t in running if t.is_alive()]
        store.record_unrecorded()
        if len(running) < concurrency:
            job = _claim(store, pid, start)
            if job is not None:
                thread = threading.Thread(target=run_job, args=(store, job), daemon=True)
                thread.start()
                running.append(thread)
                idle_since = time.time()
                continue
        if running or store.unrecorded:  # an end the disk refused keeps the worker (and its retries) alive
            idle_since = time.time()
        elif idle_exit is not None and time.time() - idle_since > idle_exit:
            lock.let_go()  # then one more look: a job submitted while the lock was held is not left behind
            if not store.has_queued() or not lock.take():
                return
            idle_since = time.time()
        time.sleep(poll)


def _claim(store: Store, pid: int, start: str | None) -> dict | None:
    """The next job, or None; a store the disk will not let it write is said in one line, and tried again later."""
    try:
        return store.claim(pid, start)
    except MopeError as e:
        _say(f"error: could not take the next job: {e}")
        time.sleep(1.0)
        return None


def _say(line: str) -> None:
    """One line to the worker's log (stderr); a log on the same full disk refusing it is no reason to stop."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


def _lock_unless_a_worker_lives(root: Path, grace: float = 3.0) -> int | None:
    """The worker lock, or None while a live worker holds it. A worker killed a moment ago can still hold it
    for a few milliseconds (its threads are torn down after its main thread shows as gone): wait for that."""
    end = time.time() + grace
    while (fd := _try_flock(root / WORKER_LOCK)) is None:
        marker = _read_marker(root) or {}
        if _alive(marker.get("pid"), marker.get("start")) or time.time() > end:
            return None
        time.sleep(0.02)
    return fd


def ensure_worker(store: Store, concurrency: int = 1, idle_exit: float = 60.0) -> int | None:
    """Start a background worker unless one serves the store; returns the new worker's pid, else None.

    Atomic: the store's worker lock is taken here and handed to the new worker, so among any number of
    simultaneous callers (threads or processes) exactly one starts a worker."""
    with _flocked(store.root / SPAWN_LOCK):
        fd = _lock_unless_a_worker_lives(store.root)
        if fd is None:
            return None
        try:
            with open(store.root / "worker.log", "ab") as log:
                # what `python -m mope worker` runs, without building the CLI (its choices load torch)
                code = f"from mope.jobs import Store, work; work(Store(), {int(concurrency)}, {float(idle_exit)!r})"
                proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=log, pass_fds=(fd,),
                                        start_new_session=True, env={**os.environ, WORKER_LOCK_FD: str(fd),
                                                                     "MOPE_HOME": str(store.root.parent)})
            _write_marker(store.root, proc.pid)
        finally:
            os.close(fd)
    return proc.pid
