import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# every test session gets its own home: caches, jobs and workers never touch ~/.cache/mope or another run
os.environ["MOPE_HOME"] = tempfile.mkdtemp(prefix="mope-test-")
# MOPE_TEST_DEVICE=cuda runs every test that runs a model on the GPU (bench/gpu.sh); default cpu
DEVICE = os.environ.get("MOPE_TEST_DEVICE", "cpu")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, set before CUDA starts

import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mope.io import atomic_save_safetensors, atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if torch.device(DEVICE).type == "cuda":  # the same numbers run after run: full fp32 and deterministic kernels
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)
# torchrun tests start two ranks, each on its own GPU: with fewer than two GPUs they run on the CPU
TORCHRUN_DEVICE = DEVICE if torch.device(DEVICE).type != "cuda" or torch.cuda.device_count() >= 2 else "cpu"


def subprocess_env(home=None, **extra: str) -> dict[str, str]:
    """The parent's environment (packages on PYTHONPATH included, MOPE_TEST_DEVICE too), with this checkout
    importable, offline, and its own MOPE_HOME when given."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path, **extra}
    if home is not None:
        env["MOPE_HOME"] = str(home)
    return env

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 16, "mlp_ratio": 2},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def tiny_config(**vision) -> dict:
    cfg = json.loads(json.dumps(TINY))
    cfg["vision_cfg"].update(vision)
    return cfg


def save_local_dir(model: torch.nn.Module, cfg: dict, folder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "open_clip_config.json", {"model_cfg": cfg, "preprocess_cfg": {}})
    atomic_save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()},
                            folder / "open_clip_model.safetensors")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A random-init tiny CLIP saved as an open_clip local-dir folder."""
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY)
    folder = tmp_path_factory.mktemp("tiny") / "tiny-clip"
    save_local_dir(model, TINY, folder)
    return folder


@pytest.fixture(scope="session")
def tiny_registered(tmp_path_factory):
    """Registers 'mope-tiny' (and 'mope-tiny-wide') as open_clip model names for NAME:/ckpt specs."""
    folder = tmp_path_factory.mktemp("configs")
    (folder / "mope-tiny.json").write_text(json.dumps(TINY))
    (folder / "mope-tiny-wide.json").write_text(json.dumps(tiny_config(width=96, head_width=16)))
    open_clip.add_model_config(folder)
    return "mope-tiny"
