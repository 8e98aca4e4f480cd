import pytest
from conftest import DEVICE

import mope
from mope.pipeline import prune_model
from mope.study import compression_curve, iterative_name


@pytest.fixture(scope="module")
def scored(tiny_dir):
    clip = mope.load_model(str(tiny_dir), device=DEVICE)
    task = mope.load_task("shapes", n=24, seed=5)
    scores = mope.score(clip, task, towers=["vision"], units=["head", "neurons"], baselines=("magnitude", "random"),
                        cache=False)
    return clip, scores, task


def test_curve_prunes_more_at_each_budget_and_starts_at_the_dense_model(scored):
    clip, scores, task = scored
    df = compression_curve(clip, scores, task, removed=(0.25, 0.75))
    assert list(df.ranking.unique()) == ["MoPE", "magnitude", "random"] and len(df) == 9
    dense = mope.evaluate(clip, task)["acc1"]
    assert (df[df.removed == 0].acc1 == dense).all()
    for _, g in df.groupby("ranking"):
        assert list(g.heads + g.groups) == sorted(g.heads + g.groups) and g.heads.iloc[-1] + g.groups.iloc[-1] > 0
    by_hand = mope.evaluate(mope.prune(clip, mope.plan(scores, mope.Budget(keep=0.25), by="magnitude")), task)["acc1"]
    assert df[(df.removed == 0.75) & (df.ranking == "magnitude")].acc1.item() == by_hand


def test_curve_can_be_cancelled_with_the_rows_so_far(scored):
    clip, scores, task = scored
    calls = []
    with pytest.raises(mope.Cancelled) as stopped:
        compression_curve(clip, scores, task, removed=(0.5,), should_stop=lambda: calls.append(1) or len(calls) > 1)
    assert len(stopped.value.rows) == 3 + 1  # the dense rows and the one evaluated before the stop


def test_curve_adds_iterative_mope_reached_in_k_rescored_steps(scored):
    clip, scores, task = scored
    df = compression_curve(clip, scores, task, removed=(0.5,), rankings={"MoPE": "mope"}, iterative=(2,),
                           calibration=task)
    assert list(df.ranking.unique()) == ["MoPE", iterative_name(2)]
    by_hand = prune_model(clip, task, mope.Budget(keep=0.5), scores=scores, steps=2, metric=scores.attrs["metric"],
                          baselines=())
    row = df[(df.removed == 0.5) & (df.ranking == iterative_name(2))]
    assert row.acc1.item() == mope.evaluate(by_hand, task)["acc1"]
    assert row.heads.item() + row.groups.item() == sum(len(r["removed"]) for r in by_hand.info["iterative"]["record"])


def test_iterative_curve_needs_the_calibration_task(scored):
    clip, scores, task = scored
    with pytest.raises(mope.MopeError, match="calibration task"):
        compression_curve(clip, scores, task, removed=(0.5,), iterative=(2,))


def test_a_budget_the_plan_refuses_is_a_row_with_its_reason(scored):
    clip, scores, task = scored
    df = compression_curve(clip, scores, task, removed=(0.5, 0.99), rankings={"MoPE": "mope"})
    refused = df[df.removed == 0.99]
    assert refused.acc1.isna().all() and refused.note.str.contains("removes every head").all()
    assert df[df.removed == 0.5].acc1.notna().all()
