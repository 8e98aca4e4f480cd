import subprocess
import sys
import time
from pathlib import Path

import open_clip
import pytest
import torch
from conftest import DEVICE, subprocess_env
from safetensors.torch import save_file

import mope
from mope.models import DEMO_DIR


def _state(clip):
    return {k: v.detach().cpu().clone() for k, v in clip.model.state_dict().items()}


def test_demo_loads_in_eval_mode():
    clip = mope.load_model("demo", device=DEVICE)
    assert not clip.model.training
    assert clip.spec == "demo" and "demo" in clip.name
    assert clip.tokenizer(["a red circle"]).shape == (1, 32)


def test_demo_loads_with_plain_open_clip():
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{DEMO_DIR}")
    ours = mope.load_model("demo", device=DEVICE)
    for (k, a), (_, b) in zip(model.state_dict().items(), ours.model.state_dict().items()):
        assert torch.equal(a, b.cpu()), k


def test_local_dir_and_plain_folder(tiny_dir):
    a = mope.load_model(f"local-dir:{tiny_dir}", device=DEVICE)
    b = mope.load_model(str(tiny_dir), device=DEVICE)
    assert all(torch.equal(x, y) for x, y in zip(_state(a).values(), _state(b).values()))
    assert not a.model.training


def test_checkpoint_files_pt_and_safetensors(tiny_dir, tiny_registered, tmp_path):
    ref = _state(mope.load_model(str(tiny_dir), device=DEVICE))
    torch.save(ref, tmp_path / "ckpt.pt")
    save_file(ref, tmp_path / "ckpt.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.items()}}, tmp_path / "wrapped.pt")
    for name in ("ckpt.pt", "ckpt.safetensors", "wrapped.pt"):
        clip = mope.load_model(f"{tiny_registered}:{tmp_path / name}", device=DEVICE)
        assert all(torch.equal(ref[k], v.cpu()) for k, v in clip.model.state_dict().items()), name


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_checkpoint_with_arbitrary_objects_is_refused(tiny_registered, tmp_path):
    torch.save({"state_dict": {}, "evil": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(mope.MopeError, match="could not load"):
        mope.load_model(f"{tiny_registered}:{tmp_path / 'evil.pt'}", device=DEVICE)


def test_corrupt_missing_and_foreign_checkpoints(tiny_dir, tiny_registered, tmp_path):
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(mope.MopeError, match="could not load"):
        mope.load_model(f"{tiny_registered}:{tmp_path / 'corrupt.safetensors'}", device=DEVICE)
    with pytest.raises(mope.MopeError, match="not found"):
        mope.load_model(f"{tiny_registered}:{tmp_path / 'missing.pt'}", device=DEVICE)
    torch.save(_state(mope.load_model(str(tiny_dir), device=DEVICE)), tmp_path / "tiny.pt")
    with pytest.raises(mope.MopeError, match="another architecture"):
        mope.load_model(f"mope-tiny-wide:{tmp_path / 'tiny.pt'}", device=DEVICE)


@pytest.mark.parametrize("spec, message", [
    ("ViT-B-32:laion2b_s34b_b79k", "HF_HUB_OFFLINE"),
    ("ViT-B-32-quickgelu:openai", "HF_HUB_OFFLINE"),
    ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "HF_HUB_OFFLINE"),
    ("ViT-B-32:no-such-tag", "unknown pretrained tag"),
    ("ViT-B-99:openai", "unknown model"),
    ("ViT-B-32", "names no weights"),
    ("/no/such/folder", "not found"),
])
def test_bad_specs_fail_fast_with_a_clear_message(spec, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(mope.MopeError, match=message):
        mope.load_model(spec, device=DEVICE)
    assert time.time() - start < 5


def test_folder_without_config_is_not_a_model(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(mope.MopeError, match="not a model folder"):
        mope.load_model(str(tmp_path), device=DEVICE)


def test_cli_errors_are_one_line_without_traceback():
    out = subprocess.run([sys.executable, "-m", "mope", "eval", "--model", "ViT-B-32:openai"],
                         capture_output=True, text=True, env=subprocess_env(),
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 2
    assert out.stderr.startswith("error:") and "Traceback" not in out.stderr
