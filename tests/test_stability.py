import numpy as np
import pandas as pd
import pytest

from mope.errors import MopeError
from mope.planning import Budget
from mope.stability import plan_stability, stability_line


def table(per_image: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A one-layer vision table of 4 heads whose MoPE is the row mean of `per_image`."""
    names = [f"vision.L0.head{i}" for i in range(4)]
    scores = pd.DataFrame({"tower": "vision", "kind": "head", "layer": 0, "index": range(4), "unit": names,
                           "mope": per_image.mean(axis=1), "params": 10, "flops": 10})
    return scores, pd.DataFrame(per_image, index=names)


def test_a_clear_winner_is_always_removed():
    rng = np.random.default_rng(0)
    per_image = rng.normal(0, 0.01, (4, 64)) + np.array([[0.0], [1.0], [1.0], [1.0]])
    scores, matrix = table(per_image)
    result = plan_stability(scores, Budget(heads=1), matrix, resamples=50)
    assert result["per_unit"] == {"vision.L0.head0": 1.0} and result["stable"] == 1 and result["mean_overlap"] == 1.0
    assert "1 of the 1 removed units" in stability_line(result)


def test_a_coin_toss_between_two_equal_units_is_unstable():
    rng = np.random.default_rng(0)
    per_image = rng.normal(0, 1.0, (4, 64)) + np.array([[0.0], [0.0], [5.0], [5.0]])
    scores, matrix = table(per_image)
    result = plan_stability(scores, Budget(heads=1), matrix, resamples=200)
    [frequency] = result["per_unit"].values()
    assert 0.2 < frequency < 0.8 and result["stable"] == 0


def test_no_per_image_results_is_a_clear_error():
    scores, matrix = table(np.zeros((4, 8)))
    with pytest.raises(MopeError, match="no per-image results"):
        plan_stability(scores, Budget(heads=1), matrix.rename(index=lambda n: "other"), resamples=5)
    with pytest.raises(MopeError, match="resamples"):
        plan_stability(scores, Budget(heads=1), matrix, resamples=0)


def test_the_plan_carries_its_stability_through_a_round_trip():
    from mope.planning import Plan, plan
    from mope.stability import with_stability

    scores, matrix = table(np.random.default_rng(1).normal(0, 0.1, (4, 16)) + np.arange(4)[:, None])
    p = with_stability(plan(scores, Budget(heads=2)), scores, matrix, resamples=20)
    assert p.stability["units"] == 2 and Plan.from_dict(p.to_dict()).stability == p.stability


def test_stability_of_a_real_plan_from_cached_per_image_results(tiny_dir):
    import mope
    from mope.stability import measured_stability

    clip = mope.load_model(str(tiny_dir), device="cpu")
    task = mope.load_task("shapes", n=16)
    scores = mope.score(clip, task, towers=["vision"], units=["head", "neurons"], metric="loss", baselines=())
    per_image = mope.scoring.per_image(scores)
    assert np.allclose(per_image.mean(axis=1).to_numpy(), scores.set_index("unit").loc[per_image.index, "mope"],
                       atol=1e-5)
    p = measured_stability(mope.plan(scores, Budget(keep=0.5)), scores, resamples=30)
    assert p.stability["units"] == len(p.removed) and 0 <= p.stability["stable"] <= len(p.removed)


def test_the_tie_break_is_resampled_with_the_metric_or_the_line_says_it_was_not():
    """Four heads tie at acc1 MoPE 0 on every image; the loss decides, between two units a coin toss."""
    rng = np.random.default_rng(0)
    scores, matrix = table(np.zeros((4, 64)))
    loss = rng.normal(0, 1.0, (4, 64)) + np.array([[0.0], [0.0], [5.0], [5.0]])
    scores["mope_loss"] = loss.mean(axis=1)
    losses = pd.DataFrame(loss, index=matrix.index)
    fixed = plan_stability(scores, Budget(heads=1), matrix, resamples=200)
    assert fixed["tie_break"] == "fixed" and fixed["stable"] == 1  # the sample's own order every time
    assert "overstates the stability" in stability_line(fixed)
    resampled = plan_stability(scores, Budget(heads=1), matrix, resamples=200, per_image_loss=losses)
    [frequency] = resampled["per_unit"].values()
    assert resampled["tie_break"] == "resampled" and 0.2 < frequency < 0.8 and resampled["stable"] == 0
    assert "overstates" not in stability_line(resampled)
    with pytest.raises(MopeError, match="same units and images"):
        plan_stability(scores, Budget(heads=1), matrix, resamples=5, per_image_loss=losses.iloc[:, :32])


def test_the_cache_keeps_the_tie_breaks_per_image_loss_and_stability_resamples_it(tiny_dir):
    import mope
    from mope.stability import measured_stability

    clip = mope.load_model(str(tiny_dir), device="cpu")
    task = mope.load_task("shapes", n=16)
    scores = mope.score(clip, task, towers=["vision"], units=["head", "neurons"], metric="acc1", baselines=())
    losses = mope.scoring.per_image(scores, "mope_loss")
    assert losses.shape == (len(scores), 16)
    assert np.allclose(losses.mean(axis=1).to_numpy(), scores.set_index("unit").loc[losses.index, "mope_loss"],
                       atol=1e-5)
    p = measured_stability(mope.plan(scores, Budget(keep=0.5)), scores, resamples=30)
    assert p.stability["tie_break"] == "resampled"
    by_loss = mope.score(clip, task, towers=["vision"], units=["head", "neurons"], metric="loss", baselines=())
    assert mope.scoring.per_image(by_loss, "mope_loss") is None  # its mope is the loss: nothing to break ties
    assert measured_stability(mope.plan(by_loss, Budget(keep=0.5)), by_loss, resamples=5).stability["tie_break"] is None
