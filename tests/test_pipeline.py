import pytest

import mope
from mope.pipeline import prune_model
from mope.plan import Budget
from mope.units import tower_blocks


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return mope.load_model(str(tiny_dir), device="cpu")


def test_prune_model_width_then_depth_rescores_layers(tiny):
    task = mope.load_task("shapes", n=8)
    pruned = prune_model(tiny, task, Budget(keep=0.6, layers=1, towers=("vision",)), metric="loss", cache=False,
                         baselines=())
    steps = pruned.info["plan"]
    assert len(steps) == 2 and all(n.count(".") == 2 for n in steps[0]["removed"])
    assert [n for n in steps[1]["removed"]] in (["vision.L0"], ["vision.L1"])
    assert len(tower_blocks(pruned.model, "vision")) == 1
