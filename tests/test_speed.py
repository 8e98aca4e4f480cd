import pytest
import torch
from conftest import DEVICE

import mope
from mope.speed import gflops_per_sample, interleaved_latency, speed_table
from mope.units import Unit


def _vision_flops(width=64, tokens=17, ffn=128, heads=4, head_dim=16, layers=2, patch_in=3 * 8 * 8, patches=16, embed=32):
    inner = heads * head_dim
    per_layer = tokens * width * 3 * inner + tokens * inner * width + 2 * heads * tokens * tokens * head_dim \
        + 2 * tokens * width * ffn
    return 2 * (layers * per_layer + patches * patch_in * width + width * embed)


def test_flops_are_counted_by_hand_dense_and_pruned(tiny_dir):
    clip = mope.load_model(str(tiny_dir), device=DEVICE)
    assert gflops_per_sample(clip, "vision") * 1e9 == pytest.approx(_vision_flops())
    pruned = mope.surgery.prune_units(clip, [Unit("vision", "head", 0, 1), Unit("vision", "head", 1, 2)],
                                      {"vision": 64, "text": 64})
    dense, smaller = _vision_flops(), _vision_flops(heads=3)
    assert gflops_per_sample(pruned, "vision") * 1e9 == pytest.approx(smaller)
    assert smaller < dense


def test_counting_flips_no_process_wide_switch_and_leaves_the_model_alone(tiny_dir, monkeypatch):
    clip = mope.load_model(str(tiny_dir), device="cpu")
    attentions = [b.attn for b in clip.model.visual.transformer.resblocks]

    def refuse(*_):
        raise AssertionError("a process-wide switch was flipped while other threads may be running")

    monkeypatch.setattr(torch.backends.mha, "set_fastpath_enabled", refuse)
    monkeypatch.setattr(torch._C, "_set_sdp_use_flash", refuse)
    assert gflops_per_sample(clip, "vision") * 1e9 == pytest.approx(_vision_flops())
    assert [b.attn for b in clip.model.visual.transformer.resblocks] == attentions


def test_speed_table_rows(tiny_dir):
    df = speed_table(mope.load_model(str(tiny_dir), device=DEVICE), batches=(1, 4), repeats=1)
    assert list(df.tower) == ["vision", "vision", "text", "text"] and (df["throughput (/s)"] > 0).all()


def test_interleaved_latency_alternates_models_and_reports_medians(tiny_dir, monkeypatch):
    from mope import speed

    a = mope.load_model(str(tiny_dir), device="cpu")
    b = mope.surgery.prune_units(a, [Unit("vision", "head", 0, 1)], {"vision": 64, "text": 64})
    now, calls = [0.0], []
    scripted = {"a": iter([9.0, 0.003, 0.001, 0.002, 0.010]), "b": iter([9.0, 0.020, 0.040, 0.030, 0.500])}

    def forward_takes_scripted_time(name):
        def hook(module, args):
            calls.append(name)
            now[0] += next(scripted[name])
        return hook

    for name, clip in (("a", a), ("b", b)):
        clip.model.visual.register_forward_pre_hook(forward_takes_scripted_time(name))
    monkeypatch.setattr(speed, "_clock", lambda: now[0])
    df = speed.interleaved_latency({"a": a, "b": b}, "vision", batch=2, repeats=4, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]  # interleaved, order rotated each round
    got = df.set_index("model")
    assert got.loc["a", "median (ms)"] == pytest.approx(2.5) and got.loc["b", "median (ms)"] == pytest.approx(35.0)
    assert got.loc["b", "max (ms)"] == pytest.approx(500.0) and got.loc["a", "min (ms)"] == pytest.approx(1.0)
    assert df.attrs["device"].startswith("cpu (")


def test_interleaved_latency_refuses_models_on_different_devices(tiny_dir):
    a = mope.load_model(str(tiny_dir), device="cpu")
    b = mope.load_model(str(tiny_dir), device="cpu")
    b.device = torch.device("meta")
    with pytest.raises(mope.MopeError, match="different devices"):
        interleaved_latency({"a": a, "b": b})
