import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DEVICE, TORCHRUN_DEVICE, subprocess_env

import mope
from mope import distill as distill_module
from mope.distill import DistillConfig, distill, loss_terms
from mope.planning import Budget
from mope.scoring import unit_table

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def student_dir(tiny_dir, tmp_path_factory):
    clip = mope.load_model(str(tiny_dir), device=DEVICE)
    p = mope.plan(unit_table(clip), Budget(keep=0.5, layers=1), by="magnitude")
    return mope.save_pruned(mope.prune(clip, p), tmp_path_factory.mktemp("students") / "student")


def _pair(tiny_dir, student_dir):
    return mope.load_model(str(tiny_dir), device=DEVICE), mope.load_model(str(student_dir), device=DEVICE)


def _config(**kw):
    return DistillConfig(**{"steps": 6, "batch_size": 8, "eval_every": 3, "checkpoint_every": 3, "warmup": 2, **kw})


def test_loss_terms_vanish_when_the_student_is_the_teacher():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    h = {"vision": [torch.randn(4, 3, 8)]}
    terms = loss_terms(DistillConfig(contrastive=1.0), img, txt, img, txt, h, h, torch.tensor(10.0))
    p = (img @ txt.T / 0.05).softmax(-1)
    entropy = -(p * p.log()).sum(-1).mean()
    assert terms["feature"] == 0 and terms["hidden"] == 0
    assert terms["affinity"] >= entropy - 1e-5  # soft CE with itself is the entropy (both directions averaged)
    other = loss_terms(DistillConfig(), img.flip(0), txt, img, txt, h, h, torch.tensor(10.0))
    assert other["affinity"] > terms["affinity"] and other["feature"] > 0


def test_distill_moves_the_student_towards_the_teacher(tiny_dir, student_dir, tmp_path):
    teacher, student = _pair(tiny_dir, student_dir)
    held_out = mope.load_task("shapes", n=16, seed=77)
    x = torch.stack([teacher.preprocess(held_out.pil_image(i)) for i in range(16)]).to(DEVICE)
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}

    def gap():
        with torch.inference_mode():
            return (teacher.model.encode_image(x, normalize=True) - student.model.encode_image(x, normalize=True)).pow(2).sum(-1).mean()

    start = gap()
    task = mope.load_task("shapes", n=20)
    before_training, teacher_eval = mope.evaluate(student, task), mope.evaluate(teacher, task)
    seen = []
    distill(teacher, student, "shapes", _config(steps=30, lr=1e-3), tmp_path / "run", eval_task=task,
            progress=lambda step, total, eta, info: seen.append((step, info)))
    assert gap() < start
    assert all(torch.equal(before[k], v) for k, v in teacher.model.state_dict().items())
    assert not any(p.requires_grad for p in teacher.model.parameters())
    assert [s for s, _ in seen] == list(range(31))
    assert {"affinity", "feature", "hidden"} <= set(seen[-1][1]["losses"]) and seen[3][1]["eval"]["step"] == 3
    history = student.info["distill"]["history"]
    assert len(history) == 11 and history[0] == {"step": 0, **before_training} == seen[0][1]["eval"]
    assert seen[0][1]["references"] == {"teacher": teacher_eval, "pruned": before_training}
    assert student.info["distill"]["references"]["teacher"] == teacher_eval
    trained = [info for step, info in seen if step]
    assert all(t >= 0 for info in trained for t in info["time"].values()) and set(trained[0]["time"]) == {"data_s", "compute_s"}


@pytest.mark.parametrize("workers", [(0, 0, 0), (0, 2, 1)], ids=["in-process", "with-workers"])
def test_resume_continues_exactly(tiny_dir, student_dir, tmp_path, workers):
    teacher, straight = _pair(tiny_dir, student_dir)
    distill(teacher, straight, "shapes", _config(workers=workers[0]), tmp_path / "a")
    _, first = _pair(tiny_dir, student_dir)
    distill(teacher, first, "shapes", _config(steps=6, workers=workers[1]), tmp_path / "b", should_stop=_stop_after(3))
    _, resumed = _pair(tiny_dir, student_dir)
    distill(teacher, resumed, "shapes", _config(workers=workers[2]), tmp_path / "b", resume=True)
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    assert json.loads((tmp_path / "b" / "checkpoint" / "latest.json").read_text())["step"] == 6


def _stop_after(n):
    calls = []
    return lambda: calls.append(1) or len(calls) > n


def test_incompatible_student(tiny_dir, tmp_path):
    import open_clip
    from conftest import save_local_dir, tiny_config

    cfg = tiny_config(width=96, head_width=16)
    save_local_dir(open_clip.CLIP(**cfg), cfg, tmp_path / "wide")
    teacher = mope.load_model(str(tiny_dir), device=DEVICE)
    with pytest.raises(mope.MopeError, match="not derived from the teacher"):
        distill(teacher, mope.load_model(str(tmp_path / "wide"), device=DEVICE), "shapes", _config(), tmp_path / "x")


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tiny_dir, student_dir, tmp_path, monkeypatch):
    teacher, student = _pair(tiny_dir, student_dir)
    real = distill_module.loss_terms
    calls = []

    def breaking(*a):
        calls.append(1)
        terms = real(*a)
        return {k: v * float("nan") for k, v in terms.items()} if len(calls) == 5 else terms

    monkeypatch.setattr(distill_module, "loss_terms", breaking)
    with pytest.raises(mope.MopeError, match="loss became nan at step 4"):
        distill(teacher, student, "shapes", _config(checkpoint_every=1), tmp_path / "run")
    latest = json.loads((tmp_path / "run" / "checkpoint" / "latest.json").read_text())
    assert latest["step"] == 4 and (tmp_path / "run" / "checkpoint" / "student-4.safetensors").is_file()


def test_a_dead_data_worker_is_a_clear_error_and_keeps_the_checkpoint(tiny_dir, student_dir, tmp_path, monkeypatch):
    import os
    import signal
    import time

    from mope.data import shapes

    real = shapes.stream_batch

    def dying(batch_size, seed, step, image_size=64):
        if step == 4:  # once the step-3 checkpoint is written (workers prefetch ahead)
            while not (tmp_path / "run" / "checkpoint" / "latest.json").is_file():
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(batch_size, seed, step, image_size)

    monkeypatch.setattr(shapes, "stream_batch", dying)
    teacher, student = _pair(tiny_dir, student_dir)
    with pytest.raises(mope.MopeError, match="worker reading 'shapes' died.*checkpoint .* is intact"):
        distill(teacher, student, "shapes", _config(workers=2), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "checkpoint" / "latest.json").read_text())["step"] == 3


def test_disk_full_while_checkpointing_keeps_the_previous_one(tiny_dir, student_dir, tmp_path, monkeypatch):
    import errno

    teacher, student = _pair(tiny_dir, student_dir)
    real = distill_module.atomic_save_safetensors
    calls = []

    def full(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **kw)

    monkeypatch.setattr(distill_module, "atomic_save_safetensors", full)
    with pytest.raises(mope.MopeError, match="previous checkpoint is intact"):
        distill(teacher, student, "shapes", _config(), tmp_path / "run")
    folder = tmp_path / "run" / "checkpoint"
    assert json.loads((folder / "latest.json").read_text())["step"] == 3
    assert (folder / "student-3.safetensors").is_file() and (folder / "trainer-3.pt").is_file()
    assert not list(folder.glob("*.tmp"))


def _full_safetensors(real):
    from safetensors import SafetensorError

    def save_file(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")  # the writer got some bytes out before the disk filled
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
    return save_file


def _full_torch_save(real):
    def save(obj, path, *a, **kw):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file data/0: "
                           "file write failed")
    return save


@pytest.mark.parametrize("writer, full", [("safetensors.torch.save_file", _full_safetensors),
                                          ("torch.save", _full_torch_save)])
def test_disk_full_in_the_writer_itself_is_one_line_and_leaves_no_orphan(tiny_dir, student_dir, tmp_path, monkeypatch,
                                                                         writer, full):
    """safetensors and torch.save report a full disk as SafetensorError / RuntimeError, not OSError."""
    import importlib

    teacher, student = _pair(tiny_dir, student_dir)
    module, name = writer.rsplit(".", 1)
    real, calls = getattr(importlib.import_module(module), name), []

    def maybe_full(*a, **kw):
        calls.append(1)
        return (full(real) if len(calls) == 2 else real)(*a, **kw)

    monkeypatch.setattr(writer, maybe_full)
    with pytest.raises(mope.MopeError) as e:
        distill(teacher, student, "shapes", _config(), tmp_path / "run")
    assert "\n" not in str(e.value) and "free disk space" in str(e.value) and "previous checkpoint is intact" in str(e.value)
    folder = tmp_path / "run" / "checkpoint"
    assert json.loads((folder / "latest.json").read_text())["step"] == 3
    assert sorted(p.name for p in folder.iterdir()) == ["latest.json", "student-3.safetensors", "trainer-3.pt"]


def test_empty_data_is_a_clear_error(tiny_dir, student_dir, tmp_path):
    teacher, student = _pair(tiny_dir, student_dir)
    (tmp_path / "pairs.csv").write_text("image,caption\nmissing.png,a cat\n")
    with pytest.raises(mope.MopeError, match="could be read"):
        distill(teacher, student, f"pairs:{tmp_path / 'pairs.csv'}", _config(), tmp_path / "run")


def test_torchrun_two_processes(tiny_dir, student_dir, tmp_path):
    env = subprocess_env(tmp_path / "h", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "mope", "--",
                          "distill", "--teacher", str(tiny_dir), "--student", str(student_dir), "--steps", "4",
                          "--batch-size", "4", "--eval-n", "16", "--eval-every", "2", "--quiet", "--device", TORCHRUN_DEVICE,
                          "--out", str(tmp_path / "ddp")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("distilled 4 steps") == 1  # only rank 0 writes and reports
    meta = json.loads((tmp_path / "ddp" / "final" / "pruning.json").read_text())
    assert meta["distill"]["steps_done"] == 4 and len(meta["distill"]["history"]) == 3
    assert mope.load_model(str(tmp_path / "ddp" / "final"), device=DEVICE)
