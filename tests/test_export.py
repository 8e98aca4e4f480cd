import builtins
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import mope
from mope import export as export_module
from mope.blocks import PrunedAttention
from mope.cli import main
from mope.export import TOLERANCE, export
from mope.surgery import prune_units
from mope.units import Unit, tower_blocks


@pytest.fixture(scope="module")
def uneven(tiny_dir):
    """Heads removed unevenly (4, 1 and 0 … per layer), a layer with no FFN neuron left, text heads too."""
    tiny = mope.load_model(str(tiny_dir), device="cpu")
    removed = ([Unit("vision", "head", 1, h) for h in range(3)] + [Unit("vision", "neurons", 0, 0),
               Unit("vision", "neurons", 0, 1), Unit("text", "head", 0, 1)])
    return prune_units(tiny, removed, {"vision": 64, "text": 64})


@pytest.fixture(scope="module")
def exported(uneven, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "onnx"
    return out, export(uneven, out)


def _ort(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_uneven_heads_export_and_match_torch_at_any_batch(uneven, exported):
    out, meta = exported
    heads = [b.attn.num_heads for b in tower_blocks(uneven.model, "vision")]
    assert heads == [4, 1] and isinstance(tower_blocks(uneven.model, "vision")[1].attn, PrunedAttention)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "image.onnx", "open_clip_config.json", "text.onnx"]
    assert json.loads((out / "export.json").read_text()) == meta and meta["opset"] == 23
    assert all(0 <= d <= TOLERANCE for d in meta["max_abs_diff"].values())
    image, text = _ort(out / "image.onnx"), _ort(out / "text.onnx")
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(11))  # a batch size never exported
    tokens = uneven.tokenizer(["a red circle", "a cat", "", "two dogs on a white background", "z"])
    with torch.inference_mode():
        want = uneven.model.encode_image(x).numpy(), uneven.model.encode_text(tokens).numpy()
    got = image.run(None, {"image": x.numpy()})[0], text.run(None, {"tokens": tokens.numpy()})[0]
    for g, w in zip(got, want):
        assert g.shape == w.shape == (5, 32) and np.abs(g - w).max() <= TOLERANCE


def test_the_folder_tokenizes_with_open_clip(exported, uneven):
    import open_clip

    out, _ = exported
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    assert torch.equal(tokenizer(["a red circle"]), uneven.tokenizer(["a red circle"]))


def test_bad_output_folders_and_formats(uneven, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "a-file").write_text("x")
    for out, message in [(tmp_path / "taken", "already exists"), (tmp_path / "a-file" / "onnx", "cannot write")]:
        with pytest.raises(mope.MopeError, match=message):
            export(uneven, out)
    with pytest.raises(mope.MopeError, match="unknown export format 'tflite'; use onnx"):
        export(uneven, tmp_path / "new", format="tflite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "taken"]


def test_a_failed_check_leaves_nothing_behind(uneven, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "TOLERANCE", -1.0)  # no export can pass: the check must refuse it
    with pytest.raises(mope.MopeError, match="differs from torch"):
        export(uneven, tmp_path / "onnx")
    assert list(tmp_path.iterdir()) == []


def test_missing_onnx_packages_say_how_to_install(uneven, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kw):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'", name="onnxruntime")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(mope.MopeError, match="onnxruntime is missing.*requirements-export.txt"):
        export(uneven, tmp_path / "onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_and_its_errors(tiny_dir, tmp_path, capsys):
    assert main(["export", "--model", str(tiny_dir), "--out", str(tmp_path / "onnx")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("max |onnxruntime - torch|") == 2 and (tmp_path / "onnx" / "text.onnx").is_file()
    new = str(tmp_path / "new")
    for args, message in [(["--model", str(tmp_path / "nowhere"), "--out", new], "no such file or folder"),
                          (["--model", str(tiny_dir), "--format", "tflite", "--out", new], "--format must be one of onnx"),
                          (["--model", str(tiny_dir), "--out", str(tmp_path / "onnx")], "already exists")]:
        assert main(["export", *args]) == 2
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]


def test_export_job_reports_each_tower_and_refuses_a_taken_folder(tiny_dir, tmp_path, monkeypatch):
    from mope.jobs import Store, work

    monkeypatch.setenv("MOPE_HOME", str(tmp_path / "home"))
    store = Store()
    ok = store.submit("export", {"model": str(tiny_dir), "out": str(tmp_path / "onnx")})
    taken = store.submit("export", {"model": str(tiny_dir), "out": str(tmp_path / "onnx")})
    work(store, idle_exit=0.5)
    job = store.get(ok)
    assert job["status"] == "done" and set(job["result"]["max_abs_diff"]) == {"vision", "text"}
    assert job["progress"]["step"] == 2 and "text tower exported" in job["progress"]["message"]
    failed = store.get(taken)
    assert failed["status"] == "failed" and "already exists" in failed["error"]
