import pytest
import torch

import mope
from mope.blocks import attend
from mope.units import (
    BlockView,
    Unit,
    check_group_size,
    default_group_size,
    enumerate_units,
    model_summary,
    tower_blocks,
    unit_flops,
    unit_params,
)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return mope.load_model(str(tiny_dir), device="cpu")


def test_enumerate_counts_and_order(tiny):
    units = enumerate_units(tiny.model)
    # per layer: vision 4 heads + 2 neuron groups (FFN 128 / 64) + 1 layer; text 2 heads + 2 groups + 1
    assert len(units) == 2 * 7 + 2 * 5
    assert [u.name for u in units[:7]] == ["vision.L0.head0", "vision.L0.head1", "vision.L0.head2", "vision.L0.head3",
                                           "vision.L0.neurons0", "vision.L0.neurons1", "vision.L0"]
    assert units == enumerate_units(tiny.model)
    assert {u.kind for u in enumerate_units(tiny.model, ["text"], ["head"])} == {"head"}


def test_unit_names_round_trip():
    for u in [Unit("vision", "head", 3, 5), Unit("text", "neurons", 0, 2), Unit("vision", "layer", 7)]:
        assert Unit.parse(u.name) == u
    with pytest.raises(mope.MopeError):
        Unit.parse("vision.head")


def test_group_sizes():
    assert default_group_size(3072) == 64 and default_group_size(640) == 64 and default_group_size(100) == 50


def test_bad_group_size_and_kind(tiny):
    with pytest.raises(mope.MopeError, match="does not divide"):
        check_group_size(tiny.model, ["vision"], 48)
    for size in (0, -64):  # issue 11: 0 silently meant the default
        with pytest.raises(mope.MopeError, match="group_size must be a whole number from 1"):
            check_group_size(tiny.model, ["vision"], size)
    with pytest.raises(mope.MopeError, match="unknown unit kind"):
        enumerate_units(tiny.model, kinds=["attention"])
    with pytest.raises(mope.MopeError, match="unknown tower"):
        enumerate_units(tiny.model, towers=["audio"])


def test_unit_params_partition_the_layer(tiny):
    block = tower_blocks(tiny.model, "vision")[0]
    d = block.attn.embed_dim
    heads = sum(unit_params(tiny.model, Unit("vision", "head", 0, h), 64) for h in range(4))
    groups = sum(unit_params(tiny.model, Unit("vision", "neurons", 0, g), 64) for g in range(2))
    shared = d + d + 4 * d  # out_proj.bias, c_proj.bias, ln_1, ln_2
    assert heads + groups + shared == unit_params(tiny.model, Unit("vision", "layer", 0), 64)
    assert unit_flops(tiny.model, Unit("vision", "layer", 0), 64) > 4 * unit_flops(tiny.model, Unit("vision", "head", 0, 0), 64)


def test_summary(tiny):
    s = model_summary(tiny.model)
    assert s["vision"]["layers"] == 2 and s["vision"]["heads"] == [4, 4] and s["vision"]["ffn"] == [128, 128]
    assert s["text"]["heads"] == [2, 2]
    assert s["vision"]["params"] + s["text"]["params"] + 1 == s["params"]  # + logit_scale


def test_block_view_locates_each_head_and_neuron_group(tiny):
    block = tower_blocks(tiny.model, "vision")[1]
    view, attn = BlockView(block), block.attn
    x = torch.randn(2, 5, view.width, generator=torch.Generator().manual_seed(0))
    for h in range(view.heads):
        q_rows, k_rows, v_rows = view.head_rows(h)
        w, b = attn.in_proj_weight, attn.in_proj_bias
        q, k, v = (x @ w[r].T + b[r] for r in (q_rows, k_rows, v_rows))
        alone = torch.softmax(q @ k.transpose(1, 2) / view.head_dim ** 0.5, -1) @ v
        want = alone @ attn.out_proj.weight[:, view.head_columns(h)].T + attn.out_proj.bias
        only_h = torch.zeros(2, view.heads)
        only_h[:, h] = 1
        with torch.inference_mode():
            assert torch.allclose(attend(attn, x, head_mask=only_h), want, atol=1e-5)
        assert torch.equal(view.rows_of_heads([h]), torch.cat([torch.arange(r.start, r.stop) for r in view.head_rows(h)]))
        assert sum(p[i].numel() for p, i in view.weights("head", h, 64)) + 3 * view.head_dim == view.params("head", 64)
    cols = view.neuron_slice(1, 64)
    assert (cols.start, cols.stop) == (64, 128)
    assert sum(p[i].numel() for p, i in view.weights("neurons", 1, 64)) + 64 == view.params("neurons", 64)
    assert view.params("layer", 64) == sum(p.numel() for p in block.parameters())
