import json
import random

import open_clip
import pandas as pd
import pytest
import torch
from conftest import DEVICE

import mope
from mope.ablation import ablated
from mope.blocks import PrunedAttention
from mope.planning import Budget, plan
from mope.pruned import save_pruned
from mope.scoring import unit_table
from mope.surgery import prune, prune_units
from mope.units import Unit, enumerate_units, tower_blocks

GS = {"vision": 64, "text": 64}


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return mope.load_model(str(tiny_dir), device=DEVICE)


def _inputs(clip, n=5):
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(7)).to(clip.device)
    return x, clip.tokenizer(["a red circle", "a photo of a cat", "two dogs", "", "a blue star"]).to(clip.device)


def _embeddings(model, x, tokens):
    with torch.inference_mode():
        return model.encode_image(x), model.encode_text(tokens)


def _assert_pruned_equals_ablated(clip, removed, gs=GS):
    pruned = prune_units(clip, removed, gs)
    x, tokens = _inputs(clip)
    got = _embeddings(pruned.model, x, tokens)
    with ablated(clip.model, removed, gs):
        want = _embeddings(clip.model, x, tokens)
    for a, b in zip(got, want):
        assert (a - b).abs().max() <= 1e-5
    return pruned


def test_random_plans_equal_ablation(tiny):
    units = [u for u in enumerate_units(tiny.model) if u.kind != "layer"]
    layers = [u for u in enumerate_units(tiny.model) if u.kind == "layer"]
    rng = random.Random(0)
    for _ in range(6):
        removed = rng.sample(units, rng.randint(1, len(units) // 2)) + rng.sample(layers, rng.randint(0, 1))
        pruned = _assert_pruned_equals_ablated(tiny, removed)
        assert sum(p.numel() for p in pruned.model.parameters()) < sum(p.numel() for p in tiny.model.parameters())


def test_edge_cases_all_heads_all_neurons_one_layer_left(tiny):
    all_heads = [Unit("vision", "head", 0, h) for h in range(4)] + [Unit("text", "head", 1, h) for h in range(2)]
    pruned = _assert_pruned_equals_ablated(tiny, all_heads)
    attn = tower_blocks(pruned.model, "vision")[0].attn
    assert isinstance(attn, PrunedAttention) and attn.num_heads == 0 and attn.in_proj_weight.shape == (0, 64)
    all_neurons = [Unit("vision", "neurons", 1, g) for g in range(2)]
    pruned = _assert_pruned_equals_ablated(tiny, all_neurons)
    assert tower_blocks(pruned.model, "vision")[1].mlp.c_fc.out_features == 0
    pruned = _assert_pruned_equals_ablated(tiny, [Unit("vision", "layer", 0), Unit("text", "layer", 1)])
    assert len(tower_blocks(pruned.model, "vision")) == 1 and pruned.model.visual.transformer.layers == 1


def test_static_attributes_follow_the_surgery(tiny):
    pruned = prune_units(tiny, [Unit("vision", "head", 1, 2), Unit("vision", "neurons", 0, 1)], GS)
    block0, block1 = tower_blocks(pruned.model, "vision")
    assert block1.attn.num_heads == 3 and block1.attn.head_dim == 16 and block1.attn.embed_dim == 64
    assert block0.mlp.c_fc.out_features == 64 and block0.mlp.c_proj.in_features == 64
    assert isinstance(tower_blocks(tiny.model, "vision")[1].attn, torch.nn.MultiheadAttention)  # original untouched
    names = {n for n, _ in pruned.model.named_parameters()}
    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in names
    assert "visual.transformer.resblocks.1.attn.out_proj.weight" in names


def test_pruned_model_can_be_scored_and_pruned_again(tiny):
    first = prune_units(tiny, [Unit("vision", "head", 0, 0), Unit("vision", "head", 1, 3)], GS)
    second = prune_units(first, [Unit("vision", "head", 1, 0), Unit("vision", "layer", 0)], GS)
    s = second.info["structure"]["vision"]
    assert s["layers"] == [1] and s["heads"][1] == [1, 2]  # source heads 0 and 3 of layer 1 are gone
    df = mope.scoring.score(first, mope.load_task("shapes", n=8), metric="loss", baselines=(), cache=False)
    assert (df[df.tower == "vision"].groupby("layer").kind.apply(lambda k: (k == "head").sum()).tolist() == [3, 3])


def test_save_and_load_round_trip_without_source_weights(tiny, tmp_path):
    p = plan(unit_table(tiny), Budget(keep=0.5, layers=1, towers=("vision", "text")), by="magnitude")
    pruned = prune(tiny, p)
    folder = save_pruned(pruned, tmp_path / "pruned")
    meta = json.loads((folder / "pruning.json").read_text())
    assert meta["stock"] is False and meta["source_spec"] == tiny.spec and meta["plan"][0]["removed"]
    back = mope.load_model(str(folder), device=DEVICE)
    x, tokens = _inputs(tiny)
    for a, b in zip(_embeddings(back.model, x, tokens), _embeddings(pruned.model, x, tokens)):
        assert torch.equal(a, b)
    with pytest.raises(mope.MopeError, match="already exists"):
        save_pruned(pruned, folder)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["pruned"]  # nothing half-written beside it


def test_depth_only_or_uniform_ffn_fits_stock_open_clip(tiny, tmp_path):
    removed = [Unit("vision", "layer", 1), Unit("vision", "neurons", 0, 1), Unit("text", "neurons", 0, 0),
               Unit("text", "neurons", 1, 1)]
    pruned = prune_units(tiny, removed, GS)
    folder = save_pruned(pruned, tmp_path / "stock")
    assert json.loads((folder / "pruning.json").read_text())["stock"] is True
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    model.eval().to(tiny.device)
    x, tokens = _inputs(tiny)
    for a, b in zip(_embeddings(model, x, tokens), _embeddings(pruned.model, x, tokens)):
        assert torch.allclose(a, b, atol=1e-6)


def test_scores_from_another_model_are_refused(tiny, tiny_dir):
    other = mope.load_model(str(tiny_dir), device=DEVICE)
    with torch.no_grad():
        other.model.visual.proj.mul_(2)
    p = plan(unit_table(other), Budget(keep=0.5), by="magnitude")
    with pytest.raises(mope.MopeError, match="another model"):
        prune(tiny, p)


def test_not_a_model_folder(tmp_path):
    (tmp_path / "pruning.json").write_text("{}")
    (tmp_path / "open_clip_config.json").write_text("{}")
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"")
    with pytest.raises(mope.MopeError, match="not a pruned model"):
        mope.load_model(str(tmp_path), device=DEVICE)


def test_a_plan_that_does_not_say_its_group_size_is_refused_not_guessed(tiny):
    """A table built from score()'s progress rows has no attrs: pruning its plan used to take each neuron group
    as one neuron (removing 1/64 of what the plan counted); now it is a clear error, and the returned table works."""
    task = mope.load_task("shapes", n=4)
    seen = []
    scores = mope.score(tiny, task, towers=["vision"], units=["head", "neurons"], metric="loss", cache=False,
                        baselines=(), progress=lambda done, total, eta, rows: seen.append(list(rows)))
    budget = Budget(keep=0.5, towers=("vision",), strategy="global")
    bare = plan(pd.DataFrame(seen[-1]), budget)
    assert any(u.kind == "neurons" for u in bare.removed) and bare.group_sizes == {}
    with pytest.raises(mope.MopeError, match="does not say their size"):
        prune(tiny, bare)
    good = plan(scores, budget)
    assert {u.name for u in good.removed} == {u.name for u in bare.removed}
    kept = prune(tiny, good).model.visual.transformer.resblocks
    assert good.group_sizes["vision"] == 64  # a group is 64 neurons, not the 1 that was guessed
    assert sum(b.mlp.c_fc.out_features for b in kept) == sum(
        b.mlp.c_fc.out_features for b in tiny.model.visual.transformer.resblocks) - 64 * sum(
        u.kind == "neurons" for u in good.removed)
