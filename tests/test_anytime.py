import numpy as np
import pandas as pd
import pytest

import mope
from mope import scoring
from mope.anytime import next_round, note, standard_error, uncertain
from mope.plan import Budget, plan
from mope.scoring import Cancelled, score

COLUMNS = ["unit", "mope", "base", "ablated", "images_used", "se", "estimate", "rank"]


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return mope.load_model(str(tiny_dir), device="cpu")


@pytest.mark.parametrize("kind, metric", [("zeroshot", "acc1"), ("retrieval", "loss")])
def test_anytime_ends_equal_to_exact_and_reports_whole_tables(tiny, kind, metric):
    task = mope.load_task("shapes", kind=kind, n=37)
    kw = dict(metric=metric, baselines=("magnitude",), cache=False)
    exact = score(tiny, task, **kw)
    snapshots = []
    anytime = score(tiny, task, schedule="anytime", first_round=9,
                    progress=lambda done, total, eta, rows: snapshots.append(pd.DataFrame(rows)), **kw)
    cols = COLUMNS + (["mope_loss"] if metric != "loss" else [])
    pd.testing.assert_frame_equal(anytime[cols], exact[cols])  # bit for bit: exact float comparison
    assert anytime.attrs["anytime"]["done"] and not anytime.estimate.any()
    whole = [s for s in snapshots if len(s) == len(exact)]
    first = whole[0]
    vision = first.tower == "vision"
    assert (first.images_used[vision] == 9).all() and first.estimate[vision].all() and (first["round"] == 1).all()
    assert "magnitude" in first.columns  # plans need params / flops from round 1
    assert [int(s["round"].max()) for s in whole] == sorted(int(s["round"].max()) for s in whole)
    assert len({int(s["round"].max()) for s in whole}) >= 3  # at least: 9 images, a refinement, the rest
    assert (whole[-1].images_used == 37).all()
    assert first.se[vision & (first.mope != 0)].gt(0).any()
    note_text = plan(first, Budget(keep=0.5, towers=("vision",))).notes
    assert any("ranked on 9" in n and "round 1 of anytime scoring" in n for n in note_text)
    assert not any("ranked on" in n for n in plan(anytime, Budget(keep=0.5, towers=("vision",))).notes)


def test_a_stopped_anytime_run_resumes_from_its_last_round(tiny, monkeypatch):
    task = mope.load_task("shapes", n=40)
    kw = dict(towers=["vision"], metric="loss", baselines=())
    rounds = []
    with pytest.raises(Cancelled, match="stopped in round 2") as info:
        score(tiny, task, schedule="anytime", first_round=10, should_stop=lambda: 14 in rounds,
              progress=lambda done, total, eta, rows: rounds.append(len(rows)), **kw)
    assert len(info.value.rows) == 14 and all(r["images_used"] == 10 for r in info.value.rows)
    sizes = []
    original = scoring.FastScorer.on
    monkeypatch.setattr(scoring.FastScorer, "on", lambda self, t, pad=True: sizes.append(len(t)) or original(self, t, pad))
    done = score(tiny, task, schedule="anytime", first_round=10, **kw)
    assert sizes and 10 not in sizes and min(sizes) == 20  # round 1 came from the cache
    exact = score(tiny, task, cache=False, **kw)
    assert (done.mope.values == exact.mope.values).all()
    again = score(tiny, task, **kw)  # the finished anytime table is the exact table's cache entry
    assert (again.mope.values == exact.mope.values).all()
    matrix = scoring.per_image(again)  # every unit's per-image results, gathered over the rounds
    assert matrix.shape == (14, 40) and np.allclose(matrix.mean(axis=1).values, exact.mope.values, atol=1e-5)


def test_anytime_bad_input(tiny, monkeypatch):
    task = mope.load_task("shapes", n=12)
    with pytest.raises(mope.MopeError, match="unknown schedule 'sometimes'"):
        score(tiny, task, schedule="sometimes", cache=False)
    with pytest.raises(mope.MopeError, match="12 images, fewer than the first round's 16"):
        score(tiny, task, schedule="anytime", first_round=16, cache=False)
    with pytest.raises(mope.MopeError, match="one process"):
        score(tiny, task, schedule="anytime", impl="naive", cache=False)
    polls = []
    with pytest.raises(Cancelled, match="stopped in round 1") as info:
        score(tiny, task, towers=["vision"], schedule="anytime", first_round=4, cache=False, baselines=(),
              should_stop=lambda: polls.append(1) or len(polls) > 1)
    assert 0 < len(info.value.rows) < 14 and all(r["images_used"] == 4 for r in info.value.rows)


def test_schedule_rules():
    table = pd.DataFrame({"tower": ["vision"] * 8, "kind": ["head"] * 8,
                          "mope": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 5.0], "se": [0.05] * 7 + [0.0],
                          "images_used": [16] * 7 + [64]})
    # the band: 25th–75th percentile, 0.175–0.525; 0.1 ± 0.1 and 0.6 ± 0.1 reach into it, 0.0 ± 0.1 does not,
    # 5.0 is exact
    assert list(uncertain(table, 64)) == [False, True, True, True, True, True, True, False]
    todo, size = next_round(table, 64, 16)
    assert size == 32 and list(todo) == list(uncertain(table, 64))
    table["images_used"] = 64
    table["se"] = 0.0
    todo, size = next_round(table, 64, 64)
    assert size == 0 and not todo.any()
    table.loc[0, "images_used"] = 16
    todo, size = next_round(table, 64, 64)
    assert size == 64 and list(todo) == [True] + [False] * 7  # settled but not exact: the last round takes it
    assert standard_error(np.array([1.0, 0.0, 1.0, 0.0]), 4) == 0.0
    se = standard_error(np.array([1.0, 0.0, 1.0, 0.0]), 400)
    assert se == pytest.approx(np.std([1, 0, 1, 0], ddof=1) / 2 * np.sqrt(396 / 399))
    assert standard_error(np.array([0.5]), 400) == np.inf
    assert note(table.assign(estimate=False)) is None
