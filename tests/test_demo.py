"""The shipped demo model: shape, size, speed-independent quality on held-out shapes."""
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from conftest import DEVICE
from safetensors.torch import load_file

import mope
from mope.demo import STATE_FILE, images_to_input, train_demo
from mope.units import model_summary


@pytest.fixture(scope="module")
def demo():
    return mope.load_model("demo", device=DEVICE)


def test_demo_architecture(demo):
    s = model_summary(demo.model)
    assert s["params"] <= 12_000_000
    assert s["vision"]["layers"] >= 6 and min(s["vision"]["heads"]) >= 4
    assert isinstance(demo.tokenizer, open_clip.SimpleTokenizer)


def test_fast_training_input_equals_open_clip_preprocess(demo):
    task = mope.load_task("shapes", n=4)
    want = torch.stack([demo.preprocess(task.pil_image(i)) for i in range(4)])
    assert torch.allclose(images_to_input(task.images), want, atol=1e-5)


def test_demo_quality_on_held_out_images(demo):
    zs = mope.evaluate(demo, mope.load_task("shapes", n=500))
    assert zs["acc1"] >= 0.90
    retrieval = mope.evaluate(demo, mope.load_task("shapes", protocol="retrieval", n=500))
    assert retrieval["text_retrieval_recall@5"] >= 0.50


def test_demo_recognizes_shapes_anywhere(demo):
    free = mope.evaluate(demo, mope.load_task("shapes:placement=free", n=500))
    assert free["acc1"] >= 0.85  # the grid-only model it replaced: 0.647 (README)
    colour = mope.evaluate(demo, mope.load_task("shapes:placement=free,target=colour", n=500))
    assert colour["acc1"] >= 0.99


TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16, "mlp_ratio": 2},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
RUN = {"steps": 4, "batch_size": 8, "placement": "free", "grid_every": 2, "eval_every": 100, "config": TINY}


class Interrupted(Exception):
    pass


def _interrupt_at(step):
    def log(line):
        if line.startswith(f"step {step}/"):
            raise Interrupted
    return log


@pytest.mark.parametrize("workers", [(0, 0, 0), (0, 2, 1)], ids=["in-process", "with-workers"])
def test_interrupted_training_resumes_to_the_same_weights(tmp_path, workers):
    """Bit for bit, whether batches are made in this process or by DataLoader workers (2 then 1 of them)."""
    straight, seen = tmp_path / "straight", []
    done = train_demo(out=straight, log=lambda line: None, workers=workers[0],
                      progress=lambda step, total, eta, info: seen.append((step, total, info)), **RUN)
    assert [(step, total) for step, total, _ in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(set(info["time"]) == {"data_s", "compute_s"} and min(info["time"].values()) >= 0 for *_, info in seen)
    assert done["data_s"] == pytest.approx(sum(info["time"]["data_s"] for *_, info in seen))
    resumed = tmp_path / "resumed"
    with pytest.raises(Interrupted):  # stopped after step 2 ran, from a checkpoint written after step 1
        train_demo(out=resumed, log=_interrupt_at(2), log_every=1, checkpoint_every=2, workers=workers[1], **RUN)
    lines = []
    train_demo(out=resumed, log=lines.append, resume=True, workers=workers[2], **RUN)
    assert lines[0] == f"resumed from {resumed / STATE_FILE} at step 2"
    want, got = (load_file(d / "open_clip_model.safetensors") for d in (straight, resumed))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert open_clip.create_model_and_transforms(f"local-dir:{resumed}")[0] is not None


def test_a_dead_data_worker_is_a_clear_error_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    import os
    import signal
    import time

    from mope.data import shapes

    real, state = shapes.stream_batch, tmp_path / STATE_FILE

    def dying(batch_size, seed, step, **kw):
        if step == 3:  # in the worker that makes batch 3, once the step-2 checkpoint is written
            while not state.is_file():
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(batch_size, seed, step, **kw)

    monkeypatch.setattr(shapes, "stream_batch", dying)
    with pytest.raises(mope.MopeError, match=f"worker reading 'shapes' died.*checkpoint {state} is intact") as e:
        train_demo(out=tmp_path, log=lambda line: None, checkpoint_every=2, workers=2, **RUN)
    assert "Traceback" not in str(e.value)
    assert torch.load(state, weights_only=True)["step"] == 2


def test_init_and_frozen_text_tower(tmp_path):
    train_demo(out=tmp_path / "a", log=lambda line: None, **RUN)
    train_demo(out=tmp_path / "b", log=lambda line: None, init=tmp_path / "a", freeze_text=True, **RUN)
    a, b = (load_file(tmp_path / d / "open_clip_model.safetensors") for d in ("a", "b"))
    text = [k for k in a if not k.startswith("visual.") and k != "logit_scale"]
    assert text and all(torch.equal(a[k], b[k]) for k in text)
    assert not torch.equal(a["visual.proj"], b["visual.proj"])


def test_bad_placement_or_init_fails_before_training(tmp_path):
    with pytest.raises(mope.MopeError, match="grid, free"):
        train_demo(out=tmp_path, **{**RUN, "placement": "anywhere"})
    with pytest.raises(mope.MopeError, match="no open_clip_model.safetensors in"):
        train_demo(out=tmp_path, init=tmp_path / "nothing", **RUN)
    assert not any(tmp_path.iterdir())


def test_an_init_folder_that_does_not_exist_is_a_cli_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mope", "train-demo", "--init", str(tmp_path / "nothing"),
                          "--out", str(tmp_path / "m")],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 2 and "no such folder" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "m").exists()
