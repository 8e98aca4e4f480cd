import pytest

import mope
from mope.speed import gflops_per_sample, speed_table
from mope.units import Unit


def _vision_flops(width=64, tokens=17, ffn=128, heads=4, head_dim=16, layers=2, patch_in=3 * 8 * 8, patches=16, embed=32):
    inner = heads * head_dim
    per_layer = tokens * width * 3 * inner + tokens * inner * width + 2 * heads * tokens * tokens * head_dim \
        + 2 * tokens * width * ffn
    return 2 * (layers * per_layer + patches * patch_in * width + width * embed)


def test_flops_are_counted_by_hand_dense_and_pruned(tiny_dir):
    clip = mope.load_model(str(tiny_dir), device="cpu")
    assert gflops_per_sample(clip, "vision") * 1e9 == pytest.approx(_vision_flops())
    pruned = mope.surgery.prune_units(clip, [Unit("vision", "head", 0, 1), Unit("vision", "head", 1, 2)],
                                      {"vision": 64, "text": 64})
    dense, smaller = _vision_flops(), _vision_flops(heads=3)
    assert gflops_per_sample(pruned, "vision") * 1e9 == pytest.approx(smaller)
    assert smaller < dense


def test_speed_table_rows(tiny_dir):
    df = speed_table(mope.load_model(str(tiny_dir), device="cpu"), batches=(1, 4), repeats=1)
    assert list(df.tower) == ["vision", "vision", "text", "text"] and (df["throughput (/s)"] > 0).all()
