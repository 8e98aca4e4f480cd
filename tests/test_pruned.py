"""The pruned-model folder: a hub-ready artifact a fresh process loads identically, and its provenance line."""
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mope
from mope.planning import Budget, plan
from mope.pruned import _quiet_logging, describe_provenance, folder_provenance, provenance, save_pruned
from mope.scoring import unit_table
from mope.surgery import prune_units
from mope.units import Unit

ROOT = Path(__file__).resolve().parents[1]
HUB_FILES = ["README.md", "open_clip_config.json", "open_clip_model.safetensors", "pruning.json"]

# Runs in a new interpreter: load the folder (with mope, or with plain open_clip), embed the saved inputs.
EMBED = """
import sys, torch, open_clip, mope
from safetensors.torch import load_file, save_file
torch.set_num_threads(1)
folder, inputs, out, loader = sys.argv[1:5]
if loader == "open_clip":
    model = open_clip.create_model_and_transforms("local-dir:" + folder)[0].eval()
else:
    model = mope.load_model(folder, device="cpu").model
x = load_file(inputs)
with torch.inference_mode():
    save_file({"image": model.encode_image(x["image"]), "text": model.encode_text(x["tokens"])}, out)
"""


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return mope.load_model(str(tiny_dir), device="cpu")


def _embed_in_fresh_process(folder: Path, inputs: dict, tmp_path: Path, loader: str) -> dict:
    save_file(inputs, tmp_path / "inputs.safetensors")
    out = tmp_path / f"{loader}.safetensors"
    env = {"HF_HUB_OFFLINE": "1", "MOPE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", EMBED, str(folder), str(tmp_path / "inputs.safetensors"), str(out),
                           loader], check=False, capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return load_file(out)


def _embed_here(model, inputs: dict) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the fresh process: the same kernels, the same summation order
    try:
        with torch.inference_mode():
            return {"image": model.encode_image(inputs["image"]), "text": model.encode_text(inputs["tokens"])}
    finally:
        torch.set_num_threads(threads)


def _inputs(clip) -> dict:
    image = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    return {"image": image, "tokens": clip.tokenizer(["a red circle", "a blue star", "", "two dogs", "x", "a cat"])}


@pytest.mark.parametrize("removed, loader", [
    # heads removed unevenly (one layer keeps a single head): only mope can rebuild the shapes
    ([Unit("vision", "head", 0, h) for h in (0, 1, 3)] + [Unit("vision", "head", 1, 2), Unit("text", "head", 0, 1),
                                                          Unit("vision", "neurons", 1, 0)], "mope"),
    # depth + uniform FFN pruning fits a stock open_clip config: plain open_clip loads it
    ([Unit("vision", "layer", 1), Unit("vision", "neurons", 0, 1)], "open_clip"),
])
def test_save_then_load_in_a_fresh_process_gives_identical_embeddings(tiny, tmp_path, removed, loader):
    pruned = prune_units(tiny, removed, {"vision": 64, "text": 64})
    folder = save_pruned(pruned, tmp_path / "hub-folder")
    assert sorted(f.name for f in folder.iterdir()) == HUB_FILES
    assert json.loads((folder / "pruning.json").read_text())["stock"] is (loader == "open_clip")
    inputs = _inputs(tiny)
    want, got = _embed_here(pruned.model, inputs), _embed_in_fresh_process(folder, inputs, tmp_path, loader)
    for tower in ("image", "text"):
        assert torch.equal(got[tower], want[tower]), f"{tower} embeddings differ after the round trip"


def test_the_folder_gets_the_usual_permissions(tiny, tmp_path):
    pruned = mope.prune(tiny, plan(unit_table(tiny), Budget(layers=1, towers=("vision",)), by="magnitude"))
    folder = save_pruned(pruned, tmp_path / "p")
    assert folder.stat().st_mode & 0o777 == 0o777 & ~_umask()  # not mkdtemp's 0700


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_provenance_of_original_pruned_saved_and_distilled(tiny_dir, tmp_path):
    clip = mope.load_model(str(tiny_dir), device="cpu")
    assert provenance(clip) == "original (not pruned)" == folder_provenance(tiny_dir)
    p = mope.plan(unit_table(clip), Budget(keep=0.5, layers=1), by="magnitude")
    pruned = mope.prune(clip, p)
    kinds = [u.kind for u in p.removed]
    line = provenance(pruned)
    assert line.startswith(f"pruned from {tiny_dir}; plan by magnitude (keep 0.5, layers 1, uniform, vision): ")
    assert f"{kinds.count('head')} heads, {kinds.count('neurons')} neuron groups, 1 layers removed" in line
    assert line.endswith("not distilled")
    folder = mope.save_pruned(pruned, tmp_path / "p")
    assert folder_provenance(folder) == line == provenance(mope.load_model(str(folder), device="cpu"))
    meta = {**pruned.info, "distill": {"steps_done": 40, "config": {"steps": 500}, "teacher": "demo"}}
    assert describe_provenance(meta).endswith("; distilled 40 of 500 steps from demo")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "pruning.json").write_text("{not json")
    assert folder_provenance(tmp_path / "bad") == "unknown origin (pruning.json is unreadable)"


def test_quiet_loading_silences_only_its_own_thread(caplog):
    def elsewhere():
        logging.warning("from another thread")

    with caplog.at_level(logging.WARNING), _quiet_logging():
        logging.warning("from the loading thread")
        other = threading.Thread(target=elsewhere)
        other.start()
        other.join()
        assert logging.root.manager.disable == logging.NOTSET
    logging.warning("after loading")
    assert "from another thread" in caplog.text and "after loading" in caplog.text
    assert "from the loading thread" not in caplog.text
