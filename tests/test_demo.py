"""The shipped demo model: shape, size, speed-independent quality on held-out shapes."""
import open_clip
import pytest
import torch

import mope
from mope.demo import images_to_input
from mope.units import model_summary


@pytest.fixture(scope="module")
def demo():
    return mope.load_model("demo", device="cpu")


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
    retrieval = mope.evaluate(demo, mope.load_task("shapes", kind="retrieval", n=500))
    assert retrieval["text_retrieval_recall@5"] >= 0.50
