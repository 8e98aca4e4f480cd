import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import DEVICE, subprocess_env

import mope
from mope.jobs import JobContext, Store, _alive, ensure_worker, gpu_turn, work

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOPE_HOME", str(tmp_path))
    return tmp_path


def _env(home):
    return subprocess_env(home, OMP_NUM_THREADS="1")


def _worker(home, *args):
    return subprocess.Popen([sys.executable, "-m", "mope", "worker", *args], env=_env(home), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait(predicate, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("kind, params, message", [
    ("train", {}, "unknown job kind"), ("evaluate", {}, "missing: model"),
    ("ping", {"colour": "red"}, "unknown params: colour"), ("ping", {"seconds": "soon"}, "must be a number"),
])
def test_malformed_jobs_are_rejected_at_submit(home, kind, params, message):
    store = Store()
    with pytest.raises(mope.MopeError, match=message):
        store.submit(kind, params)
    assert store.jobs() == []


def test_submit_run_done_with_results(home, tiny_dir):
    store = Store()
    ping = store.submit("ping")
    ev = store.submit("evaluate", {"model": str(tiny_dir), "n": 10})
    bad = store.submit("evaluate", {"model": "ViT-B-99:nope"})
    work(store, idle_exit=0.5)
    assert store.get(ping)["status"] == "done" and store.get(ping)["result"] == {"pong": True}
    job = store.get(ev)
    assert job["status"] == "done" and 0 <= job["result"]["metrics"]["acc1"] <= 1 and job["history"]
    failed = store.get(bad)
    assert failed["status"] == "failed" and "unknown model" in failed["error"]
    assert [j["id"] for j in store.jobs()] == [ping, ev, bad]


def test_cancel_takes_effect_quickly(home):
    store = Store()
    queued_then_cancelled = store.submit("ping", {"seconds": 30})
    store.cancel(queued_then_cancelled)
    long = store.submit("ping", {"seconds": 30})
    thread = threading.Thread(target=work, args=(store,), kwargs={"idle_exit": 0.5})
    thread.start()
    assert _wait(lambda: store.get(long)["status"] == "running", 10)
    start = time.time()
    store.cancel(long)
    thread.join(15)
    assert store.get(long)["status"] == "cancelled" and time.time() - start < 5
    assert store.get(queued_then_cancelled)["status"] == "cancelled"
    assert store.get(queued_then_cancelled)["started"] is None  # never ran


def test_killed_worker_leaves_failed_jobs_and_the_next_job_runs(home):
    store = Store()
    job = store.submit("ping", {"seconds": 120})
    proc = _worker(home)
    assert _wait(lambda: store.get(job)["status"] == "running")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    failed = next(j for j in store.jobs() if j["id"] == job)  # any look at the store reaps dead workers
    assert failed["status"] == "failed" and f"pid {proc.pid}" in failed["error"]
    after = store.submit("ping")
    work(store, idle_exit=0.5)
    assert store.get(after)["status"] == "done"


def test_resume_only_a_stopped_distillation(home):
    store = Store()
    job = store.submit("distill", {"teacher": "demo", "student": "x", "out": "y", "steps": 5})
    store.update(job, status="failed", error="worker died", started=1.0)
    again = store.resume(job)
    assert store.get(again)["params"]["resume"] is True and store.get(again)["params"]["steps"] == 5
    store.cancel(again)  # still queued: it never ran, so it has no checkpoint to continue from
    with pytest.raises(mope.MopeError, match="cancelled before it started"):
        store.resume(again)
    with pytest.raises(mope.MopeError, match="only a failed or cancelled distillation"):
        store.resume(store.submit("ping"))


def test_load_200_jobs_from_4_processes_none_lost_none_twice(home):
    submit = ("from mope.jobs import Store, ensure_worker; s = Store(); "
              "print(' '.join(s.submit('ping') for _ in range(50))); ensure_worker(s, concurrency=2, idle_exit=3)")
    busy = Store().submit("ping", {"seconds": 600})
    worker = _worker(home, "--concurrency", "2", "--idle-exit", "3")
    assert _wait(lambda: Store().get(busy)["status"] == "running")
    second = _worker(home)  # one worker per store: a second one is refused
    assert second.wait(timeout=120) == 2 and b"already runs the jobs" in second.stderr.read()
    assert Store().live_workers() == [worker.pid]
    Store().cancel(busy)
    clients = [subprocess.Popen([sys.executable, "-c", submit], env=_env(home), cwd=ROOT, stdout=subprocess.PIPE,
                                text=True) for _ in range(4)]
    ids = [i for c in clients for i in c.communicate(timeout=120)[0].split()]
    assert len(ids) == 200 and len(set(ids)) == 200
    store = Store()
    assert _wait(lambda: all(store.get(i)["status"] == "done" for i in ids), 180)
    worker.wait(timeout=60)
    for i in ids:
        assert sum("started" in line for line in store.get(i)["log"]) == 1


_SUBMITTER = """
import sys, time
from pathlib import Path
from mope.jobs import Store, ensure_worker
store = Store()
print("ready", flush=True)
while not Path(sys.argv[1]).exists():
    time.sleep(0.001)
store.submit("ping")
print(ensure_worker(store, idle_exit=2) or "-", flush=True)
"""


def test_20_simultaneous_submissions_start_exactly_one_worker(home):
    go = home / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _SUBMITTER, str(go)], env=_env(home), cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for _ in range(6)]
    assert all(p.stdout.readline().strip() == "ready" for p in procs)
    barrier, started = threading.Barrier(15), []

    def submit():
        store = Store()
        barrier.wait()
        store.submit("ping")
        started.append(ensure_worker(store, idle_exit=2))

    threads = [threading.Thread(target=submit) for _ in range(14)]
    for t in threads:
        t.start()
    go.touch()
    barrier.wait()
    for t in threads:
        t.join(60)
    started += [None if out.strip() == "-" else int(out) for out in (p.communicate(timeout=60)[0] for p in procs)]
    pids = [pid for pid in started if pid is not None]
    assert len(started) == 20 and len(pids) == 1, started
    store = Store()
    assert _wait(lambda: len(store.jobs()) == 20 and all(j["status"] == "done" for j in store.jobs()), 120)
    assert {j["worker"] for j in store.jobs()} == set(pids)
    assert _wait(lambda: not _alive(pids[0]), 60)  # it exits once idle


@pytest.mark.parametrize("how", ["idle", "killed"])
def test_a_job_submitted_after_the_worker_is_gone_runs_within_5_s(home, how):
    store = Store()
    first = store.submit("ping", {"seconds": 60 if how == "killed" else 0})
    pid = ensure_worker(store, idle_exit=0.5)
    assert _wait(lambda: store.get(first)["status"] in ("running", "done"))
    if how == "killed":
        os.kill(pid, signal.SIGKILL)
    assert _wait(lambda: not _alive(pid))
    start = time.time()
    job = store.submit("ping")
    assert ensure_worker(store, idle_exit=0.5) not in (None, pid)
    assert _wait(lambda: store.get(job)["status"] == "done", 5), (time.time() - start, store.get(job))
    assert store.get(first)["status"] == ("failed" if how == "killed" else "done")


def test_the_gpu_is_taken_in_turns_across_processes(tmp_path, monkeypatch):
    monkeypatch.setattr("mope.jobs.LOCK_DIR", tmp_path)
    hold = ("import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(2)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "mope-gpu1.lock")], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    waited = []
    with gpu_turn("cuda:0", lambda: False) as ready:  # another GPU: no wait
        assert ready
    start = time.time()
    with gpu_turn("cuda:1", lambda: False, lambda: waited.append(time.time())) as ready:
        assert ready and len(waited) == 1  # the GPU was busy, and its turn came once the holder let go
        assert holder.wait(timeout=30) == 0
        with gpu_turn("cuda:1", lambda: time.time() - start > 3) as again:  # one turn at a time, even in a process
            assert not again  # cancelled while waiting


def test_corrupted_store_is_reported_not_reset(home):
    Store().submit("ping")
    db = home / "jobs" / "cache.db"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(mope.MopeError, match="unreadable"):
        Store()
    assert db.read_bytes().startswith(b"this is not sqlite")


def test_cli_submit_list_show_cancel(home):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "mope", "jobs", *args], capture_output=True, text=True,
                              env=_env(home), cwd=ROOT)

    out = run("submit", "--kind", "ping", "--param", "seconds=30", "--no-worker")
    job = out.stdout.split()[0]
    assert out.returncode == 0 and "queued" in run("list").stdout
    assert '"kind": "ping"' in run("show", job).stdout
    assert "cancelled" in run("cancel", job).stdout
    bad = run("submit", "--kind", "nope")
    assert bad.returncode == 2 and "unknown job kind" in bad.stderr and "Traceback" not in bad.stderr


def test_cancelled_distillation_keeps_its_checkpoint_and_resumes(home, tiny_dir):
    from mope.planning import Budget
    from mope.scoring import unit_table

    clip = mope.load_model(str(tiny_dir), device=DEVICE)
    student = mope.save_pruned(mope.prune(clip, mope.plan(unit_table(clip), Budget(keep=0.5), by="magnitude")),
                               home / "student")
    store = Store()
    params = {"teacher": str(tiny_dir), "student": str(student), "out": str(home / "run"), "steps": 400,
              "batch_size": 4, "eval_n": 8}
    job = store.submit("distill", params)
    thread = threading.Thread(target=work, args=(store,), kwargs={"idle_exit": 0.5})
    thread.start()
    assert _wait(lambda: (store.get(job)["progress"] or {}).get("step", 0) >= 3, 120)
    store.cancel(job)
    thread.join(60)
    assert store.get(job)["status"] == "cancelled"
    assert (home / "run" / "checkpoint" / "latest.json").is_file()
    again = store.resume(job)
    store.update(again, params={**store.get(again)["params"], "steps": 6})
    work(store, idle_exit=0.5)
    done = store.get(again)
    assert done["status"] == "done", done["error"]
    assert mope.load_model(done["result"]["model"], device=DEVICE)


def test_prune_score_and_prune_and_distill_jobs(home, tiny_dir):
    store = Store()
    scored = store.submit("score", {"model": str(tiny_dir), "n": 8, "towers": ["vision"], "metric": "loss"})
    both = store.submit("prune-and-distill", {"model": str(tiny_dir), "out": str(home / "pd"), "n": 8, "steps": 2,
                                              "batch_size": 4, "eval_n": 8, "layers": 1, "iterative": 2})
    work(store, idle_exit=0.5)
    job = store.get(scored)
    assert job["status"] == "done", job["error"]
    assert mope.load_scores(job["result"]["scores"])["unit"].str.startswith("vision").all()
    assert job["progress"]["eta"] is None and "computing the baselines" in job["progress"]["message"]
    job = store.get(both)
    assert job["status"] == "done", job["error"]
    final = mope.load_model(job["result"]["model"], device=DEVICE)
    assert len(final.model.visual.transformer.resblocks) == 1 and final.info["distill"]["steps_done"] == 2
    assert [h["step"] for h in job["history"]] == [0, 2]  # an eval before the first step, and at the end
    assert job["references"]["pruned"] == {k: v for k, v in job["history"][0].items() if k != "step"}
    assert set(job["references"]["teacher"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert all(point for point in job["curve"])  # the step-0 report adds no empty loss point
    assert len(final.info["iterative"]["record"]) == 2  # width in two re-scored steps, then depth
    with pytest.raises(mope.MopeError, match="nope.csv: no such file"):  # refused at submit, not when it runs
        store.submit("prune", {"model": str(tiny_dir), "scores": job["result"]["pruned"] + "/nope.csv",
                               "out": str(home / "p2")})


def test_study_job_with_an_iterative_curve(home, tiny_dir):
    clip = mope.load_model(str(tiny_dir), device="cpu")
    scores = mope.score(clip, mope.load_task("shapes", n=8), towers=["vision"], units=["head", "neurons"],
                        baselines=("magnitude",))
    path = home / "scores.csv"
    mope.save_scores(scores, path)
    store = Store()
    job_id = store.submit("study", {"model": str(tiny_dir), "scores": str(path), "n": 8, "removed": [0.5],
                                    "rankings": ["mope"], "iterative": [2], "calibration": "shapes", "calibration_n": 8})
    work(store, idle_exit=0.5)
    job = store.get(job_id)
    assert job["status"] == "done", job["error"]
    study = pd.read_csv(job["result"]["study"])
    assert set(study.ranking) == {"MoPE", "MoPE iterative ×2"}


def test_anytime_score_job_reports_rounds(home, tiny_dir):
    store = Store()
    job_id = store.submit("score", {"model": str(tiny_dir), "n": 20, "towers": ["vision"], "metric": "loss",
                                    "schedule": "anytime"})
    work(store, idle_exit=0.5)
    job = store.get(job_id)
    assert job["status"] == "done", job["error"]
    assert job["progress"]["message"].startswith("round ") and "0 of 14 units estimates" in job["progress"]["message"]
    assert len(job["partial"]) == 14 and all(r["images_used"] == 20 for r in job["partial"])
    assert not mope.load_scores(job["result"]["scores"])["estimate"].any()


def test_partial_rows_are_appended_not_rewritten(tmp_path):
    store = Store(tmp_path / "jobs")
    job_id = store.submit("ping")
    ctx = JobContext(store, job_id)
    rows = [{"unit": f"u{i}"} for i in range(5)]
    ctx.partial(rows[:2])
    first = store.cache.get(f"partial:{job_id}:0")
    ctx.partial(rows[:2])  # nothing new: nothing written
    ctx.partial(rows)
    assert store.get(job_id)["partial"] == rows
    assert store.cache.get(f"partial:{job_id}:0") == first == rows[:2]
    assert store.cache.get(f"job:{job_id}")["partial"] == []  # the record itself does not grow
    assert [j["partial"] for j in store.jobs()] == [rows]
    rows[0] = {"unit": "u0", "estimate": False}  # refined in place (anytime): the stored rows are replaced
    ctx.partial(rows)
    assert store.get(job_id)["partial"] == rows


def test_listing_reads_each_job_once(tmp_path, monkeypatch):
    store = Store(tmp_path / "jobs")
    ids = [store.submit("ping") for _ in range(3)]
    reads = []
    real_get = store.cache.get
    monkeypatch.setattr(store.cache, "get", lambda key, *a, **kw: (reads.append(key), real_get(key, *a, **kw))[1])
    assert [j["id"] for j in store.jobs()] == ids
    assert sorted(k for k in reads if k.startswith("job:")) == sorted(f"job:{i}" for i in ids)


# --- a full disk while a job reports (issue 11, item 6: only submit was covered) ------------------------------

class _Disk:
    """The store's disk, made full at will: every write of a job record and every queue change then fails as sqlite
    says it on a full disk; a write already made inside the same transaction is rolled back by SQLite."""

    def __init__(self, store: Store, monkeypatch):
        self.full = False
        for name in ("set", "pull"):
            monkeypatch.setattr(store.cache, name, self._refusing(getattr(store.cache, name)))

    def _refusing(self, real):
        import sqlite3

        def write(key=None, *a, **k):
            if self.full and (not isinstance(key, str) or key.startswith("job:")):
                raise sqlite3.OperationalError("database or disk is full")
            return real(key, *a, **k) if key is not None else real(*a, **k)
        return write

    def free_in(self, seconds: float) -> None:
        threading.Timer(seconds, lambda: setattr(self, "full", False)).start()


def _reporting_job(store: Store, monkeypatch, report) -> str:
    """A queued ping job whose runner reports some rows, a curve point and progress, fills the disk, then calls
    report(ctx)."""
    from mope import runners

    def runner(params, ctx):
        ctx.progress(1, 4, None, "first")
        ctx.partial([{"unit": "a"}, {"unit": "b"}])
        ctx.curve({"step": 1, "loss": 1.0})
        ctx.flush()
        disk.full = True
        report(ctx)
        return {"pong": True}

    monkeypatch.setitem(runners.RUNNERS, "ping", runner)
    disk = _Disk(store, monkeypatch)
    job_id = store.submit("ping")
    store.disk = disk
    return job_id


@pytest.mark.parametrize("what, report", [
    ("progress", lambda ctx: ctx.progress(2, 4, None, "second")),
    ("partial rows", lambda ctx: ctx.partial([{"unit": "a"}, {"unit": "b"}, {"unit": "c"}])),
    ("partial rows rewritten", lambda ctx: ctx.partial([{"unit": "z"}])),
    ("curve", lambda ctx: (ctx.curve({"step": 2, "loss": 0.5}), ctx.flush())),
    ("metrics", lambda ctx: ctx.metrics({"step": 2, "acc1": 0.5})),
    ("log", lambda ctx: ctx.log("a line")),
    ("the finish record", lambda ctx: None),
])
def test_a_full_disk_while_a_job_reports_fails_it_clearly_and_keeps_what_was_stored(home, monkeypatch, capfd, what,
                                                                                      report):
    from mope.jobs import run_job

    store = Store()
    job_id = _reporting_job(store, monkeypatch, report)
    job = store.claim(os.getpid())
    run_job(store, job)  # no exception escapes: the worker's thread ends quietly
    stored = store.get(job_id)
    assert stored["status"] == "running" and stored["error"] is None  # the disk refused the end: nothing half-written
    assert [r["unit"] for r in stored["partial"]] == ["a", "b"] and stored["progress"]["message"] == "first"
    assert [p["step"] for p in stored["curve"]] == [1] and stored["history"] == []
    assert not any(k.startswith(f"partial:{job_id}:") and k != f"partial:{job_id}:0"
                   for k in store.cache.iterkeys() if isinstance(k, str))  # the refused chunk was rolled back
    err = capfd.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and "not yet recorded" in err and "disk" in err
    assert job_id in store.unrecorded
    store.record_unrecorded()  # still full: kept for later
    assert store.get(job_id)["status"] == "running" and job_id in store.unrecorded
    store.disk.full = False
    store.record_unrecorded()
    ended = store.get(job_id)
    assert store.unrecorded == {} and ended["finished"] is not None
    if what == "the finish record":  # the job itself had finished: it is recorded done, with its result
        assert ended["status"] == "done" and ended["result"] == {"pong": True}
    else:
        assert ended["status"] == "failed" and ended["result"] is None
        assert "disk holding the job store is full" in ended["error"] and "free disk space" in ended["error"]
    assert [r["unit"] for r in ended["partial"]] == ["a", "b"]


def test_the_worker_waits_out_a_full_disk_without_a_traceback(home, monkeypatch, capfd):
    """The worker loop: a claim refused by a full disk is one line and a later try; an end the disk refused keeps
    the worker alive until it is written, then it exits idle."""
    store = Store()
    job_id = _reporting_job(store, monkeypatch, lambda ctx: (store.disk.free_in(1.0), ctx.progress(2, 4, None, "x")))
    store.disk.full = True  # before the job is claimed
    store.disk.free_in(1.0)
    work(store, idle_exit=0.3, poll=0.05)
    job = store.get(job_id)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "could not take the next job" in err and "not yet recorded" in err
    assert job["status"] == "failed" and "full" in job["error"] and store.unrecorded == {}


def test_a_full_disk_under_the_workers_log_too_is_no_traceback(home, monkeypatch):
    """On a really full disk the worker's log (stderr, a file on that disk) refuses its one line as well."""
    import errno

    from mope.jobs import run_job

    class FullLog:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    store = Store()
    job_id = _reporting_job(store, monkeypatch, lambda ctx: ctx.progress(2, 4, None, "second"))
    monkeypatch.setattr(sys, "stderr", FullLog())
    run_job(store, store.claim(os.getpid()))  # nothing escapes
    monkeypatch.undo()
    assert job_id in store.unrecorded and store.get(job_id)["status"] == "running"
