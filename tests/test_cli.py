import json
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from conftest import DEVICE, TINY, save_local_dir, subprocess_env

import mope
from mope.planning import Budget
from mope.scoring import unit_table

ROOT = Path(__file__).resolve().parents[1]


def run(*args, home):
    return subprocess.run([sys.executable, "-m", "mope", *args], capture_output=True, text=True,
                          env=subprocess_env(home), cwd=ROOT)


def test_eval_json(tiny_dir, tmp_path):
    out = run("eval", "--model", str(tiny_dir), "--n", "20", "--json", home=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["images"] == 20 and set(result["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    table = run("eval", "--model", str(tiny_dir), "--n", "20", "--task", "retrieval", home=tmp_path)
    assert "text_retrieval_recall@5" in table.stdout


def test_score_then_prune_then_load(tiny_dir, tmp_path):
    scores = tmp_path / "scores.csv"
    out = run("score", "--model", str(tiny_dir), "--n", "8", "--towers", "vision", "--metric", "loss",
              "--baselines", "magnitude", "--chunk", "3", "--quiet", "--out", str(scores), home=tmp_path)
    assert out.returncode == 0, out.stderr
    pruned = tmp_path / "pruned"
    out = run("prune", "--model", str(tiny_dir), "--scores", str(scores), "--keep", "0.5", "--depth", "1",
              "--n", "8", "--quiet", "--out", str(pruned), home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "params after" in out.stdout and (pruned / "pruning.json").is_file()
    clip = mope.load_model(str(pruned), device=DEVICE)
    assert len(clip.model.visual.transformer.resblocks) == 1
    again = run("prune", "--model", str(tiny_dir), "--scores", str(scores), "--keep", "0.5", "--out", str(pruned),
                home=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    torch.manual_seed(1)
    save_local_dir(open_clip.CLIP(**TINY), TINY, tmp_path / "other-clip")
    other = run("prune", "--model", str(tmp_path / "other-clip"), "--scores", str(scores), "--keep", "0.5", "--out", str(tmp_path / "x"),
                home=tmp_path)
    assert other.returncode == 2 and "another model" in other.stderr and not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, message", [
    (["--keep", "1.0"], "removes nothing"), (["--keep", "0.01"], "removes every head"),
    (["--keep", "0.5", "--iterative", "0"], "--iterative must be a whole number from 1 to"),
    (["--keep", "0.5", "--iterative", "99999"], "use fewer steps"),
    (["--keep", "0.5", "--iterative", "2", "--rescore-margin", "0.5"], "below 1"),
    (["--keep", "0.5", "--iterative", "2", "--rescore-margin", "lots"], "not a number >= 1 or 'all'"),
    (["--keep", "0.5", "--iterative", "2", "--rescore-images", "0"], "--rescore-images must be a count >= 1"),
    (["--keep", "0.5", "--iterative", "2", "--rescore-images", "1.5"], "a fraction in (0, 1]"),
    (["--keep", "0.5", "--iterative", "2", "--rescore-images", "some"], "or 'all', got 'some'"),
])
def test_prune_bad_budgets(tiny_dir, tmp_path, args, message):
    scores = tmp_path / "s.csv"
    run("score", "--model", str(tiny_dir), "--n", "4", "--towers", "vision", "--units", "heads,neurons",
        "--baselines", "", "--metric", "loss", "--quiet", "--out", str(scores), home=tmp_path)
    out = run("prune", "--model", str(tiny_dir), "--scores", str(scores), *args, "--out", str(tmp_path / "p"),
              home=tmp_path)
    assert out.returncode == 2 and message in out.stderr and not (tmp_path / "p").exists()


def test_bench_prints_both_towers(tiny_dir, tmp_path):
    out = run("bench", "--model", str(tiny_dir), "--batch", "2", "--repeats", "1", home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "vision" in out.stdout and "text" in out.stdout and "throughput" in out.stdout


def test_prune_iterative_records_its_steps(tiny_dir, tmp_path):
    out = run("prune", "--model", str(tiny_dir), "--keep", "0.5", "--iterative", "2", "--step-schedule", "geometric",
              "--rescore-margin", "all", "--n", "8", "--towers", "vision", "--quiet", "--out", str(tmp_path / "p"),
              home=tmp_path)
    assert out.returncode == 0, out.stderr
    saved = json.loads((tmp_path / "p" / "pruning.json").read_text())
    assert saved["iterative"]["steps"] == 2 and len(saved["plan"]) == 2
    assert saved["iterative"]["rescore_margin"] is None  # 'all': every unit re-scored
    # each step's plan carries its bootstrap stability, measured from the cached per-image results
    assert all(step["stability"]["units"] == len(step["removed"]) for step in saved["plan"])
    assert out.stdout.count("bootstrap resamples of the 8 calibration images") == 2


def test_rescore_images_takes_auto_a_count_a_fraction_or_all():
    from mope.cli import _images
    assert [_images(v) for v in ("auto", "AUTO", "32", "0.25", "all")] == ["auto", "auto", 32, 0.25, None]


def test_prune_iterative_rescores_on_the_hardest_images(tiny_dir, tmp_path):
    out = run("prune", "--model", str(tiny_dir), "--keep", "0.5", "--iterative", "2", "--rescore-images", "4",
              "--n", "8", "--towers", "vision", "--quiet", "--out", str(tmp_path / "p"), home=tmp_path)
    assert out.returncode == 0, out.stderr
    saved = json.loads((tmp_path / "p" / "pruning.json").read_text())["iterative"]
    assert saved["rescore_images"] == 4
    assert [r["scored_on"]["images"] if r["scored_on"]["images"] == "all" else len(r["scored_on"]["images"])
            for r in saved["record"]] == ["all", 4]
    # step 2's stability is a bootstrap over the 4 images it was ranked on
    assert out.stdout.count("of the 8 calibration images") == 1 and out.stdout.count("of the 4 calibration images") == 1


@pytest.mark.parametrize("args, message", [(["--chunk", "0"], "--chunk must be a whole number"),
                                           (["--max-memory", "-2"], "--max-memory must be a number in (0")])
def test_score_bad_memory_knobs(tiny_dir, tmp_path, args, message):
    out = run("score", "--model", str(tiny_dir), "--n", "4", "--towers", "vision", *args, "--quiet",
              "--out", str(tmp_path / "s.csv"), home=tmp_path)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_distill_with_more_workers_than_cores_warns_and_runs(tiny_dir, tmp_path):
    clip = mope.load_model(str(tiny_dir), device=DEVICE)
    student = mope.save_pruned(mope.prune(clip, mope.plan(unit_table(clip), Budget(keep=0.5), by="magnitude")),
                               tmp_path / "student")
    cores = len(os.sched_getaffinity(0))
    out = run("distill", "--teacher", str(tiny_dir), "--student", str(student), "--workers", str(cores + 7),
              "--steps", "2", "--batch-size", "4", "--eval-data", "", "--quiet", "--out", str(tmp_path / "d"),
              home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"warning: --workers {cores + 7} is more than the {cores} CPU cores this process may use; using {cores}" \
        in out.stderr and "Traceback" not in out.stderr
    assert (tmp_path / "d" / "final").is_dir()


def _ctrl_c_when(monkeypatch, condition):
    """Ctrl-C (a real SIGINT to this process) at the first progress call whose rows meet `condition`."""
    import signal

    from mope import cli

    sent = []

    def update(self, done, total, eta, rows):
        if not sent and condition(rows):
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(cli._progress_bar, "update", update)
    return sent


@pytest.fixture
def ctrl_c_interrupts():
    """SIGINT as in a terminal (Python's default handler), whatever the test runner set (ignored under `&`)."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("schedule, when, left", [
    ("anytime", lambda rows: rows and rows[-1].get("round") == 2, "holds the table of round 2"),  # after round 2
    ("anytime", lambda rows: 0 < len(rows), "stopped in round 1"),  # in round 1, after its first layer's units
    ("exact", lambda rows: 0 < len(rows), "the finished layers' work is cached"),  # after the first layer
])
def test_ctrl_c_stops_a_score_keeping_its_work_and_the_same_command_continues(
        tiny_dir, tmp_path, monkeypatch, capsys, ctrl_c_interrupts, schedule, when, left):
    from mope import cli
    from mope.scoring import load_scores

    monkeypatch.setenv("MOPE_HOME", str(tmp_path / "home"))
    out = tmp_path / "scores.csv"
    argv = ["score", "--model", str(tiny_dir), "--n", "40", "--towers", "vision", "--metric", "loss",
            "--baselines", "", "--schedule", schedule, "--quiet", "--out", str(out)]
    argv += ["--first-round", "10"] if schedule == "anytime" else []
    sent = _ctrl_c_when(monkeypatch, when)
    ran = [set()]  # per run: the (unit, input) pairs run with the unit removed
    real = mope.scoring.FastScorer.sample_outputs

    def counting(self, group, inputs):
        ran[-1].update((u.name, i) for u in group for i in inputs.index.tolist())
        return real(self, group, inputs)

    monkeypatch.setattr(mope.scoring.FastScorer, "sample_outputs", counting)
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    err = capsys.readouterr().err
    assert sent and stop.value.code == 130 and left in err and "a restart continues from it" in err
    assert "Traceback" not in err and signal_is_default()
    if out.is_file():
        kept = load_scores(out)
        assert kept.estimate.all() and kept.attrs["anytime"]["round"] == 2
    else:
        assert f"nothing was written to {out}" in err
    ran.append(set())
    assert cli.main(argv) == 0  # continues from the cache to the exact table
    before, after = ran
    assert before and after and not before & after  # no input a unit ran before the stop runs again
    exact = mope.score(mope.load_model(str(tiny_dir), device="cpu"), mope.load_task("shapes", n=40), towers=["vision"],
                       metric="loss", baselines=(), cache=False)
    assert (load_scores(out).mope.values == exact.mope.values).all()


def signal_is_default() -> bool:
    import signal

    return signal.getsignal(signal.SIGINT) is signal.default_int_handler
