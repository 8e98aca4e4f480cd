import numpy as np
import pandas as pd
import pytest
from conftest import DEVICE

import mope
from mope.planning import Budget, Plan, plan
from mope.scoring import unit_table


@pytest.fixture(scope="module")
def table(tiny_dir):
    df = unit_table(mope.load_model(str(tiny_dir), device=DEVICE), baselines=("magnitude", "random"))
    df["mope"] = df["random"]
    return df


def _vit_b_table(seed=0) -> pd.DataFrame:
    """A ViT-B-32-sized table (12 heads, 48 groups of 64, 1 layer unit per layer, both towers)."""
    rng = np.random.default_rng(seed)
    rows = []
    for tower, width, heads, tokens in (("vision", 768, 12, 50), ("text", 512, 8, 77)):
        hd = width // heads
        for layer in range(12):
            for h in range(heads):
                rows.append((tower, "head", layer, h, 4 * hd * width + 3 * hd, 2 * tokens * 4 * hd * width))
            for g in range(4 * width // 64):
                rows.append((tower, "neurons", layer, g, 2 * 64 * width + 64, 2 * tokens * 2 * 64 * width))
            rows.append((tower, "layer", layer, 0, 12 * width * width, 24 * tokens * width * width))
    df = pd.DataFrame(rows, columns=["tower", "kind", "layer", "index", "params", "flops"])
    df["unit"] = [f"{t}.L{layer}" + (f".{k}{i}" if k != "layer" else "") for t, k, layer, i in
                  zip(df.tower, df.kind, df.layer, df["index"])]
    df["mope"] = rng.random(len(df))
    return df


def test_uniform_removes_the_same_lowest_units_in_every_layer(table):
    p = plan(table, Budget(keep=0.5, towers=("vision",)))
    heads = [u for u in p.removed if u.kind == "head"]
    assert {u.layer for u in heads} == {0, 1} and len(heads) == 4  # 2 of 4 heads per layer
    for layer in (0, 1):
        rows = table[(table.tower == "vision") & (table.kind == "head") & (table.layer == layer)]
        lowest = set(rows.nsmallest(2, "mope")["index"])
        assert {u.index for u in heads if u.layer == layer} == lowest
    s = p.sizes["vision"]
    assert s["params_after"] / s["params_before"] == pytest.approx(0.5, abs=0.05)
    assert "text" not in {u.tower for u in p.removed}


def test_global_respects_the_floor_and_reaches_the_budget(table):
    p = plan(table, Budget(keep=0.3, strategy="global", floor=1, towers=("vision",)))
    for layer in (0, 1):
        for kind, total in (("head", 4), ("neurons", 2)):
            removed = [u for u in p.removed if u.layer == layer and u.kind == kind]
            assert len(removed) <= total - 1
    assert p.sizes["vision"]["params_after"] < p.sizes["vision"]["params_before"]


def test_explicit_counts_depth_and_flops(table):
    p = plan(table, Budget(heads=1, neurons=1, layers=1, towers=("vision", "text")))
    kinds = [(u.tower, u.kind) for u in p.removed]
    assert kinds.count(("vision", "head")) == 2 and kinds.count(("text", "neurons")) == 2
    assert kinds.count(("vision", "layer")) == 1
    layer = next(u.layer for u in p.removed if u.kind == "layer" and u.tower == "vision")
    kept = table[(table.tower == "vision") & (table.kind == "layer") & (table.layer != layer)]
    width_gone = table[(table.tower == "vision") & table.unit.isin([u.name for u in p.removed]) &
                       (table.layer != layer) & (table.kind != "layer")]
    assert p.sizes["vision"]["params_after"] == kept.params.sum() - width_gone.params.sum()
    by_flops = plan(table, Budget(keep=0.6, measure="flops", towers=("vision",)))
    assert by_flops.sizes["vision"]["flops_after"] / by_flops.sizes["vision"]["flops_before"] == pytest.approx(0.6, abs=0.1)


def test_ranking_column_changes_the_plan(table):
    a = plan(table, Budget(keep=0.5), by="mope")
    b = plan(table, Budget(keep=0.5), by="magnitude")
    assert {u.name for u in a.removed} != {u.name for u in b.removed}


def test_plan_round_trips_through_a_dict(table):
    p = plan(table, Budget(keep=0.5, layers=1, towers=("vision", "text")))
    q = Plan.from_dict(p.to_dict())
    assert q.removed == p.removed and q.sizes == p.sizes and q.budget == p.budget


@pytest.mark.parametrize("budget, message", [
    (Budget(keep=1.0), "removes nothing"), (Budget(keep=0.0), r"keep \(vision\) must be a number in \(0, 1\]"),
    (Budget(), "removes nothing"),
    (Budget(keep=0.01), "removes every head"), (Budget(layers=2), "at least one must stay"),
    (Budget(heads=5), "cannot remove 5"), (Budget(keep=0.5, strategy="best"), "unknown strategy"),
    (Budget(keep=0.5, heads=1), "not both"), (Budget(heads=4), "removes every head of the vision tower .8 of 8"),
    (Budget(heads=2, towers=("text",)), "removes every head of the text tower"),
])
def test_impossible_budgets(table, budget, message):
    with pytest.raises(mope.MopeError, match=message):
        plan(table, budget)


def test_unknown_ranking_column(table):
    with pytest.raises(mope.MopeError, match="no column 'taylor'"):
        plan(table, Budget(keep=0.5), by="taylor")


def test_vit_b_sized_uniform_plan_halves_heads_and_neurons():
    df = _vit_b_table()
    p = plan(df, Budget(keep=0.5, layers=2, towers=("vision", "text")))
    vision = [u for u in p.removed if u.tower == "vision"]
    assert sum(u.kind == "head" for u in vision) == 12 * 6 and sum(u.kind == "neurons" for u in vision) == 12 * 24
    assert sum(u.kind == "layer" for u in vision) == 2


def test_ties_are_broken_by_the_loss_and_reported():
    df = _vit_b_table()
    df["mope_loss"] = np.random.default_rng(1).random(len(df))
    clear = plan(df, Budget(heads=3, towers=("vision",)))
    assert clear.ties == 0 and not any(n.startswith("ties") for n in clear.notes)
    layer0 = (df.tower == "vision") & (df.kind == "head") & (df.layer == 0)
    df.loc[layer0, "mope"] = 0.0  # accuracy on a small set: every head of layer 0 ties
    p = plan(df, Budget(heads=3, towers=("vision",)))
    lowest_loss = set(df[layer0].nsmallest(3, "mope_loss")["index"])
    assert {u.index for u in p.removed if u.layer == 0} == lowest_loss
    assert p.ties == 3 and any(n.startswith("ties: 3") and "mope_loss" in n for n in p.notes)
    assert Plan.from_dict(p.to_dict()).ties == 3
    # global: the floor keeps one of layer 0's tied heads while the others go, so ties decided there too
    assert plan(df, Budget(keep=0.5, strategy="global", towers=("vision",))).ties > 0
    no_loss = plan(df.drop(columns="mope_loss"), Budget(heads=3, towers=("vision",)))
    assert no_loss.ties == 3 and any("unit order" in n for n in no_loss.notes)


def test_rank_orders_by_mope_then_loss_within_each_tower():
    from mope.ranking import rank_units

    df = pd.DataFrame({"tower": ["vision"] * 4 + ["text"] * 2, "mope": [0.0, 0.2, 0.0, 0.0, 1.0, np.nan],
                       "mope_loss": [0.3, 0.0, 0.1, 0.5, 0.0, 0.0]})
    assert list(rank_units(df).iloc[:5]) == [3, 1, 4, 2, 1] and np.isnan(rank_units(df).iloc[5])
