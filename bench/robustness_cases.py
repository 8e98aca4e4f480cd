"""Issue 11's battery of bad inputs and faults, re-run against the CLI: one line per case (what README promises,
what happened, PASS/FAIL) and a total.

Every case runs `python -m mope …` in a fresh folder with its own MOPE_HOME, HF_HUB_OFFLINE=1. A refusal
must be: exit 2, one `error: …` line, no traceback, and no file changed in the working folder. Disk-full
faults are made with a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored: a write past it fails with EFBIG, as
on a full disk). The app's own cases (forged sessions, uploads, zip bombs) live in tests/test_app_security.py.

    python bench/robustness_cases.py [--only WORD]

STUDENT in a case's name is a pruned demo model the script makes first (with a scores CSV of the demo model).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SCORES_HEADER = "tower,kind,layer,index,unit,mope,params"


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float


class Sandbox:
    """A fresh working folder and MOPE_HOME for one case."""

    def __init__(self, root: Path):
        self.work, self.home = root / "work", root / "home"
        self.work.mkdir(parents=True)
        (self.work / "afile").write_text("x")
        (self.work / "adir").mkdir()

    def cli(self, *args: str, fsize: int | None = None, timeout: float = 600) -> Run:
        def limits():
            os.umask(0o022)
            if fsize is not None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

        start = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "mope", *args], cwd=self.work, env=_env(self), capture_output=True,
                           text=True, timeout=timeout, preexec_fn=limits)
        return Run(p.returncode, p.stdout, p.stderr, time.perf_counter() - start)

    def files(self) -> dict[str, int]:
        return {str(p.relative_to(self.work)): p.stat().st_size if p.is_file() else -1 for p in self.work.rglob("*")}


def refused(run: Run, before: dict, after: dict, says: str = "") -> tuple[bool, str]:
    """Exit 2, one error line (saying `says`), no traceback, no file changed."""
    errors = [line for line in run.err.splitlines() if line.startswith("error: ")]
    ok = run.code == 2 and len(errors) == 1 and "Traceback" not in run.err and before == after and says in run.err
    changed = sorted(set(after.items()) ^ set(before.items()))
    return ok, (f"exit {run.code}; " + (errors[0][:150] if errors else run.err.strip()[-150:].replace("\n", " | "))
                + (f"; files changed: {[c[0] for c in changed][:3]}" if changed else ""))


# --- cases -----------------------------------------------------------------------------------------------

@dataclass
class Case:
    item: str
    name: str
    expected: str
    check: Callable[[Sandbox, dict], tuple[bool, str]]


def bad(item: str, args: str, says: str = "", setup: Callable[[Sandbox], None] | None = None,
        fsize: int | None = None, name: str | None = None) -> Case:
    """A command line the CLI must refuse (exit 2, one line, nothing written)."""
    def check(box: Sandbox, shared: dict) -> tuple[bool, str]:
        if setup:
            setup(box)
        before = box.files()
        run = box.cli(*[a.format(**shared) for a in _split(args)], fsize=fsize)
        return refused(run, before, box.files(), says)
    return Case(item, name or args, f"exit 2, 'error: …{says}…', no traceback, nothing written", check)


def _split(args: str) -> list[str]:
    import shlex

    return shlex.split(args)


def _scores(box: Sandbox, text: str) -> None:
    (box.work / "s.csv").write_text(text)


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header says width × height (the pixel limit is read from it before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _small_png(path: Path, colour) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path)


def _symlinked_shards(box: Sandbox) -> None:
    outside = box.work.parent / "outside"
    outside.mkdir()
    shutil.copy(Path(tempfile.gettempdir()) / "mope-robustness-shard.tar", outside / "shard-0.tar")
    (box.work / "data").mkdir()
    (box.work / "data" / "link_out").symlink_to(outside)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_checkpoint(box: Sandbox) -> None:
    (box.work / "evil.pt").write_bytes(pickle.dumps({"state_dict": _Evil(box.work.parent / "PWNED")}))


def no_pickle(box: Sandbox, shared: dict) -> tuple[bool, str]:
    _evil_checkpoint(box)
    run = box.cli("eval", "--model", "ViT-B-32:evil.pt", "--n", "8")
    marker = (box.work.parent / "PWNED").exists()
    return (not marker and run.code == 2 and "Traceback" not in run.err,
            f"exit {run.code}; marker file {'CREATED' if marker else 'absent'}")


def towers_as_text(box: Sandbox, shared: dict) -> tuple[bool, str]:
    run = box.cli("jobs", "submit", "--kind", "score", "--param", "model=demo", "--param", "towers=vision", "--no-worker")
    if run.code:
        return False, f"exit {run.code}: {run.err.strip()[-150:]}"
    job = json.loads(box.cli("jobs", "show", run.out.split()[0]).out)
    return job["params"]["towers"] == ["vision"], f"stored towers = {job['params']['towers']!r}"


def folder_mode(box: Sandbox, shared: dict) -> tuple[bool, str]:
    run = box.cli("prune", "--scores", shared["scores"], "--heads", "1", "--towers", "vision", "--out", "p", "--quiet")
    if run.code:
        return False, f"exit {run.code}: {run.err.strip()[-150:]}"
    mode = (box.work / "p").stat().st_mode & 0o777
    return mode == 0o755, f"folder mode {oct(mode)} under umask 022"


def oversized_image_in_folder(box: Sandbox, shared: dict) -> tuple[bool, str]:
    for name, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        _small_png(box.work / "cal" / name / "a.png", colour)
    _png_header(box.work / "cal" / "red" / "huge.png", 12000, 12000)
    run = box.cli("eval", "--data", "folder:cal", "--json")
    if run.code:
        return False, f"exit {run.code}: {run.err.strip()[-150:]}"
    result = json.loads(run.out)
    return result["images"] == 2 and result["skipped"] == 1, f"images {result['images']}, skipped {result['skipped']}"


def distill_steps_zero(box: Sandbox, shared: dict) -> tuple[bool, str]:
    before = box.files()
    run = box.cli("distill", "--student", shared["student"], "--steps", "0", "--out", "d")
    ok, seen = refused(run, before, box.files(), "--steps")
    return ok and not (box.work / "d" / "final").exists(), seen


def full_disk(args: list[str], fsize: int, leftovers: Callable[[Path], list]) -> Callable:
    def check(box: Sandbox, shared: dict) -> tuple[bool, str]:
        run = box.cli(*[a.format(**shared) for a in args], fsize=fsize)
        errors = [line for line in run.err.splitlines() if line.startswith("error: ")]
        left = leftovers(box.work)
        ok = run.code == 2 and len(errors) == 1 and "Traceback" not in run.err and not left and (
            "free disk space" in run.err or "is full" in run.err)
        return ok, f"exit {run.code}; {(errors[0] if errors else run.err.strip()[-150:])[:170]}; left: {left[:3]}"
    return check


def _env(box: Sandbox) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "MOPE_HOME": str(box.home), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


def _stop_started_worker(*outputs: str) -> None:
    """Stop the workers these `jobs submit` outputs say they started (by their pid), as the bench ends a case."""
    for out in outputs:
        if "started worker pid" in out:
            pid = int(out.split("started worker pid")[1].split(")")[0])
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def worker_after_idle_exit(box: Sandbox, shared: dict) -> tuple[bool, str]:
    """The issue's repro: `worker --idle-exit 3`, wait until it has exited, then submit: the job runs."""
    worker = subprocess.Popen([sys.executable, "-m", "mope", "worker", "--idle-exit", "3"], cwd=box.work,
                              env=_env(box), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker.wait(timeout=300)
    submitted = box.cli("jobs", "submit", "--kind", "ping")
    start, job, status = time.time(), submitted.out.split()[0], "?"
    from mope.jobs import Store

    store = Store(box.home / "jobs")  # polled in this process: no CLI start-up in the time measured
    try:
        while time.time() - start < 60 and status != "done":
            time.sleep(0.1)
            status = store.get(job)["status"]
    finally:
        store.close()
        _stop_started_worker(submitted.out)
    waited = time.time() - start
    return status == "done" and waited <= 5, (f"the first worker exited idle (exit {worker.returncode}); the next job "
                                              f"{status} {waited:.1f} s after `jobs submit` returned")


def one_worker(box: Sandbox, shared: dict) -> tuple[bool, str]:
    procs = [subprocess.Popen([sys.executable, "-m", "mope", "jobs", "submit", "--kind", "ping"], cwd=box.work,
                              env=_env(box), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    _stop_started_worker(*outs)
    started = sum("started worker" in o for o in outs)
    return started == 1, f"{started} worker(s) started by 6 simultaneous submissions"


GOOD_ROW = "vision,head,0,1,vision.L0.head1,0.5,100"


def cases() -> list[Case]:
    scores = lambda text: (lambda box: _scores(box, text))  # noqa: E731
    return [
        # 7. tracebacks instead of error lines
        bad("7", "score --n 8 --out adir", "is a folder"),
        bad("7", "score --n 8 --out afile/s.csv", "lies under the file"),
        bad("7", "score --n 8 --out /proc/mope/s.csv", "no permission"),
        bad("7", "prune --keep 0.5 --out afile", "is a file"),
        bad("7", "prune --keep 0.5 --out afile/p", "lies under the file"),
        bad("7", "prune --keep 0.5 --scores s.csv --out p", "mope must be a number",
            scores(f"{SCORES_HEADER}\n{GOOD_ROW.replace('0.5', 'abc')}\n")),
        bad("7", "prune --keep 0.5 --scores s.csv --out p", "missing columns",
            scores("tower,kind,layer,index,unit,mope\nvision,head,0,1,vision.L0.head1,0.5\n")),
        bad("7", "prune --keep 0.5 --scores s.csv --out p", "layer must be a whole number",
            scores(f"{SCORES_HEADER}\n{GOOD_ROW.replace(',0,1,', ',x,1,')}\n")),
        bad("7", "eval --n -5", "--n must be"),
        bad("7", "score --towers , --out s.csv", "--towers takes"),
        bad("7", "score --units , --out s.csv", "--units takes"),
        bad("7", "eval --data shapes:seed=abc", "seed must be"),
        bad("7", "eval --batch-size 0", "--batch-size must be"),
        bad("7", "distill --student {student} --batch-size 0 --out d", "--batch-size must be"),
        bad("7", "bench --batch 0", "--batch"),
        bad("7", "bench --batch abc", "--batch"),
        bad("7", "distill --student {student} --checkpoint-every 0 --out d", "--checkpoint-every must be"),
        # 8. silently wrong
        bad("8", "eval --n 0", "--n must be"),
        bad("8", "score --n 0", "--n must be"),
        bad("8", "eval --data folder:adir --n -5", "--n must be"),
        Case("8", "distill --steps 0", "exit 2, no out/final", distill_steps_zero),
        bad("8", "distill --student {student} --steps -3 --out d", "--steps must be"),
        bad("8", "score --group-size 0", "--group-size must be"),
        Case("8", "jobs submit --param towers=vision", "stored as the list ['vision']", towers_as_text),
        # 9. minor
        Case("9", "prune --out p (saved folder)", "mode 0755 under umask 022, not 0700", folder_mode),
        bad("9", "jobs submit --kind ping --no-worker", "free disk space", fsize=4096,
            name="jobs submit, the job store on a full disk (not 'unreadable')"),
        # 6. disk full while writing
        Case("6", "distill, disk full at the first checkpoint", "exit 2, one line, no orphan checkpoint file",
             full_disk(["distill", "--student", "{student}", "--steps", "2", "--checkpoint-every", "1", "--eval-data", "",
                        "--batch-size", "4", "--workers", "0", "--out", "d", "--quiet"], 200_000,
                       lambda w: [p.name for p in (w / "d").rglob("*") if p.suffix in (".safetensors", ".pt", ".tmp")])),
        Case("6", "prune, disk full while saving", "exit 2, one line, no partial model folder",
             full_disk(["prune", "--scores", "{scores}", "--heads", "1", "--towers", "vision", "--out", "p", "--quiet"],
                       200_000, lambda w: [p.name for p in w.iterdir() if p.name.startswith((".p.", "p"))])),
        Case("6", "score, disk full while writing", "exit 2, one line, no temporary file",
             full_disk(["score", "--n", "8", "--towers", "vision", "--units", "head", "--baselines", "", "--no-cache",
                        "--quiet", "--out", "s.csv"], 1000, lambda w: [p.name for p in w.glob("*s.csv*")])),
        # 2. a glob through a symlink
        bad("2", "distill --student {student} --data wds:data/link_ou*/shard-*.tar --eval-data '' --steps 1 --out d",
            "leads outside", _symlinked_shards),
        # 3. the pixel limit
        Case("3", "eval on a folder holding a 12000×12000 PNG", "the big image skipped before decoding, the rest used",
             oversized_image_in_folder),
        # 5. one worker, never none
        Case("5", "6 simultaneous submissions", "exactly one worker started", one_worker),
        Case("5", "submit after the worker exited idle", "the job is done within 5 s", worker_after_idle_exit),
        # pickles are never unpickled
        Case("-", "eval --model ViT-B-32:evil.pt (a pickle that runs code)", "refused, the code never runs", no_pickle),
        # more refusals of the same kinds
        bad("7", "eval --device gpu7", "--device must be"),
        bad("7", "prune --keep 1.5 --out p", "--keep must be"),
        bad("7", "score --schedule soon", "--schedule must be"),
        bad("7", "distill --student {student} --data cifar10 --out d", "unknown training data"),
        bad("7", "train-demo --out t --init nowhere", "no such folder"),
        bad("7", "export --out afile", "is a file"),
        bad("7", "eval --model ./nowhere", "no such file or folder"),
        bad("7", "jobs submit --kind score --param model=demo --param n=0 --no-worker", "param n"),
        bad("7", "jobs submit --kind prune --param model=demo --param out=p --param budget='{{\"keep\": 2}}' --no-worker",
            "budget"),
    ]


def prepare(root: Path) -> dict:
    """A scores CSV of the demo model (vision heads) and its pruned model, shared by the cases that need them;
    a webdataset shard."""
    box = Sandbox(root / "shared")
    run = box.cli("score", "--n", "16", "--towers", "vision", "--units", "head", "--baselines", "", "--quiet",
                  "--out", "s.csv")
    assert run.code == 0, run.err
    run = box.cli("prune", "--scores", "s.csv", "--heads", "1", "--towers", "vision", "--out", "student", "--quiet")
    assert run.code == 0, run.err
    import io
    import tarfile

    with tarfile.open(Path(tempfile.gettempdir()) / "mope-robustness-shard.tar", "w") as tar:
        for i in range(4):
            from PIL import Image

            buf = io.BytesIO()
            Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(buf, format="PNG")
            for ext, data in (("png", buf.getvalue()), ("txt", b"a red square")):
                info = tarfile.TarInfo(f"s{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return {"scores": str(box.work / "s.csv"), "student": str(box.work / "student")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="run the cases whose name holds this text")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mope-robustness-"))
    shared = prepare(root)
    passed = total = 0
    for i, case in enumerate(cases()):
        if args.only and args.only not in case.name:
            continue
        box = Sandbox(root / f"case{i}")
        try:
            ok, seen = case.check(box, shared)
        except Exception as e:  # the script's own failure is a failed case, not a crash
            ok, seen = False, f"{type(e).__name__}: {e}"
        passed, total = passed + ok, total + 1
        name = case.name.replace("{student}", "STUDENT").replace("{{", "{").replace("}}", "}")
        print(f"[{'PASS' if ok else 'FAIL'}] item {case.item:>2} | {name} | expected: {case.expected} | observed: {seen}",
              flush=True)
    shutil.rmtree(root, ignore_errors=True)
    print(f"robustness cases: {passed}/{total} passed")


if __name__ == "__main__":
    main()
