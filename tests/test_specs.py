from pathlib import Path

import pytest

from mope.errors import MopeError
from mope.settings import DEMO_DIR
from mope.specs import DataSpec, ModelSpec


def test_model_specs(tmp_path):
    assert ModelSpec.parse(" demo ") == ModelSpec("demo", "demo", path=DEMO_DIR)
    assert ModelSpec.parse("demo").local_path is None
    tagged = ModelSpec.parse("ViT-B-32:laion2b_s34b_b79k")
    assert (tagged.source, tagged.name, tagged.tag, tagged.local_path) == ("pretrained", "ViT-B-32", "laion2b_s34b_b79k", None)
    assert ModelSpec.parse("ViT-B-32").tag is None
    ckpt = ModelSpec.parse("ViT-B-32:~/w/ckpt.pt")
    assert (ckpt.source, ckpt.name, ckpt.local_path) == ("checkpoint", "ViT-B-32", Path("~/w/ckpt.pt").expanduser())
    assert ModelSpec.parse("hf-hub:org/repo").hub == "org/repo"
    assert ModelSpec.parse(f"local-dir:{tmp_path}").local_path == tmp_path
    assert ModelSpec.parse(str(tmp_path)).source == "folder"
    assert ModelSpec.parse("some/missing/folder").local_path == Path("some/missing/folder")
    with pytest.raises(MopeError, match="empty model spec"):
        ModelSpec.parse("  ")


def test_data_specs():
    shapes = DataSpec.parse("shapes:target=shape,seed=3")
    assert (shapes.source, shapes.options, shapes.local_path) == ("shapes", {"target": "shape", "seed": "3"}, None)
    assert DataSpec.parse("folder:/data/cal").local_path == Path("/data/cal")
    assert DataSpec.parse("pairs:p.csv").path == "p.csv"
    assert DataSpec.parse("wds:/data/shard-*.tar").local_path == Path("/data")
    assert DataSpec.parse("cifar10").source == "cifar10"
    with pytest.raises(MopeError, match="unknown shapes option"):
        DataSpec.parse("shapes:colour=red")
    for bad in ("imagenet", "folder:", ""):
        with pytest.raises(MopeError, match="unknown data spec"):
            DataSpec.parse(bad)
    with pytest.raises(MopeError, match="not a task"):
        DataSpec.parse("wds:/x/*.tar").for_task()
    with pytest.raises(MopeError, match="unknown training data 'cifar10'"):
        DataSpec.parse("cifar10").for_training()
    assert DataSpec.parse("pairs:p.csv").for_training().source == "pairs"


def test_a_tilde_of_no_user_is_a_plain_path():
    """`--model ~0` raised pathlib's RuntimeError (no user '0'), a traceback the CLI fuzzing found."""
    from pathlib import Path

    from mope.settings import user_path
    from mope.specs import DataSpec, ModelSpec

    assert user_path("~0/x") == Path("~0/x") and user_path("~") == Path.home()
    assert ModelSpec.parse("~0").source == "pretrained" and DataSpec.parse("folder:~0/x").local_path == Path("~0/x")
