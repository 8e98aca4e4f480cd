import collections
import types

import numpy as np
import pandas as pd
import pytest
import torch

import mope
from mope import first_order, scoring
from mope.anytime import budgeted_first, contested, effective_se, ladder, next_levels, note, standard_error
from mope.cache import open_cache
from mope.evaluation import image_embeddings, task_text_embeddings, task_texts, zeroshot_stats
from mope.planning import Budget, plan
from mope.scoring import Cancelled, score
from mope.units import KINDS

COLUMNS = ["unit", "mope", "base", "ablated", "images_used", "texts_used", "se", "estimate", "rank"]


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return mope.load_model(str(tiny_dir), device="cpu")


@pytest.fixture
def runs(monkeypatch):
    """Counts, per unit, how often each of its inputs (task positions) is run through an ablation."""
    seen = collections.defaultdict(collections.Counter)
    original = scoring.FastScorer.sample_outputs

    def counting(self, group, inputs):
        for unit in group:
            seen[unit.name].update(inputs.index.tolist())
        return original(self, group, inputs)

    monkeypatch.setattr(scoring.FastScorer, "sample_outputs", counting)
    return seen


@pytest.mark.parametrize("kind, metric", [("zeroshot", "acc1"), ("retrieval", "loss")])
def test_anytime_ends_equal_to_exact_running_each_input_once(tiny, runs, kind, metric):
    task = mope.load_task("shapes", protocol=kind, n=37)
    kw = dict(metric=metric, baselines=("magnitude",), cache=False)
    exact = score(tiny, task, **kw)
    runs.clear()
    snapshots = []
    anytime = score(tiny, task, schedule="anytime", first_round=9,
                    progress=lambda done, total, eta, rows: snapshots.append(pd.DataFrame(rows)), **kw)
    cols = COLUMNS + (["mope_loss"] if metric != "loss" else [])
    pd.testing.assert_frame_equal(anytime[cols], exact[cols])  # bit for bit: exact float comparison
    assert anytime.attrs["anytime"]["done"] and not anytime.estimate.any()
    inputs = {"vision": len(task), "text": len(task_texts(task))}
    for unit in exact.itertuples():  # incremental: every input of every unit ran exactly once
        assert sorted(runs[unit.unit]) == list(range(inputs[unit.tower])) and set(runs[unit.unit].values()) == {1}
    whole = [s for s in snapshots if len(s) == len(exact)]
    first = whole[0]
    assert first.estimate.all() and (first["round"] == 1).all()
    vision, text = first.tower == "vision", first.tower == "text"
    assert (first.images_used[vision] == 9).all() and (first.texts_used[text] < inputs["text"]).all()
    assert "magnitude" in first.columns  # plans need params / flops from round 1
    assert [int(s["round"].max()) for s in whole] == sorted(int(s["round"].max()) for s in whole)
    assert len({int(s["round"].max()) for s in whole}) >= 3
    assert first.se[first.mope != 0].gt(0).any()
    notes = plan(first, Budget(keep=0.5, towers=("vision",))).notes
    assert any("ranked on 9" in n and "round 1 of anytime scoring" in n for n in notes)
    assert not any("ranked on" in n for n in plan(anytime, Budget(keep=0.5, towers=("vision",))).notes)


def _first_round_exact_and_logits(tiny, task, metric):
    """The anytime table after a 10-image first round, the exact table, and the unablated zero-shot logits."""
    kw = dict(towers=["vision"], metric=metric, baselines=())
    tables = []
    score(tiny, task, schedule="anytime", first_round=10, cache=False,
          progress=lambda d, t, e, rows: tables.append(rows), **kw)
    first = pd.DataFrame(next(r for r in tables if len(r) == 14))
    with torch.inference_mode():
        logits = tiny.model.logit_scale.exp() * image_embeddings(tiny, task) @ task_text_embeddings(tiny, task).T
    return first, score(tiny, task, **kw), logits


def test_estimates_count_the_images_not_run_as_unchanged_and_run_the_hardest_first(tiny):
    """An estimate on n images: the exact per-image MoPE of the n images with the highest unablated loss, summed
    over the whole set (the others count as 0)."""
    task = mope.load_task("shapes", n=40)
    first, exact, logits = _first_round_exact_and_logits(tiny, task, "loss")
    hardest = torch.nn.functional.cross_entropy(logits, task.labels, reduction="none").argsort(descending=True)[:10]
    expected = scoring.per_image(exact).loc[first.unit, hardest.tolist()].sum(axis=1) / len(task)
    assert np.allclose(first.mope, expected.values, atol=1e-5) and (first.images_used == 10).all()
    assert (first.se > 0).all() and (first.se < np.inf).all()


def test_a_hit_metric_runs_the_images_nearest_the_decision_first(tiny):
    """acc1: the first round's images are those whose loss amounts to the smallest two-class margin,
    |log(1 / (e^loss - 1))|, right or wrong; the estimate is their exact per-image MoPE summed over the set."""
    task = mope.load_task("shapes", n=40)
    first, exact, logits = _first_round_exact_and_logits(tiny, task, "acc1")
    loss = torch.nn.functional.cross_entropy(logits, task.labels, reduction="none").double()
    margin = logits.gather(1, task.labels[:, None])[:, 0] - logits.scatter(1, task.labels[:, None], -1e9).max(1).values
    nearest = torch.log(torch.expm1(loss)).abs().argsort()[:10]
    assert margin[nearest].abs().max() < margin.abs().sort().values[20]  # near the decision, on either side
    expected = scoring.per_image(exact).loc[first.unit, nearest.tolist()].sum(axis=1) / len(task)
    assert np.allclose(first.mope, expected.values, atol=1e-6) and (first.images_used == 10).all()


def test_a_stopped_anytime_run_resumes_and_ends_equal_to_exact(tiny, runs):
    task = mope.load_task("shapes", n=40)
    kw = dict(metric="acc1", baselines=())
    units, rounds = len(scoring.unit_table(tiny, baselines=())), []
    with pytest.raises(Cancelled, match="stopped in round 2") as info:
        score(tiny, task, schedule="anytime", first_round=10, should_stop=lambda: len(rounds) > 1,
              progress=lambda done, total, eta, rows: rounds.append(1) if len(rows) == units else None, **kw)
    assert len(info.value.rows) == units
    before = {unit: dict(count) for unit, count in runs.items()}
    runs.clear()
    done = score(tiny, task, schedule="anytime", first_round=10, **kw)
    for unit, count in before.items():  # the restart runs no input a unit ran before the stop
        assert not set(count) & set(runs[unit]), unit
    exact = score(tiny, task, cache=False, **kw)
    cols = COLUMNS + ["mope_loss"]
    pd.testing.assert_frame_equal(done[cols], exact[cols])
    again = score(tiny, task, **kw)  # the finished anytime table is the exact table's cache entry
    assert (again.mope.values == exact.mope.values).all()
    matrix = scoring.per_image(again)  # every unit's per-image results, gathered over the rounds
    assert matrix.shape == (units, 40) and np.allclose(matrix.mean(axis=1).values, exact.mope.values, atol=1e-5)
    losses = scoring.per_image(again, "mope_loss")  # and the tie-break's, for the stability bootstrap
    assert losses.shape == (units, 40) and np.allclose(losses.mean(axis=1).values, exact.mope_loss.values, atol=1e-5)


def test_a_stopped_runs_table_plans_and_prunes_neuron_groups_of_their_size(tiny):
    task = mope.load_task("shapes", n=40)
    units, rounds = len(scoring.unit_table(tiny, ["vision"], baselines=())), []
    with pytest.raises(Cancelled, match="stopped in round 2") as info:
        score(tiny, task, towers=["vision"], schedule="anytime", first_round=10, cache=False, baselines=(),
              metric="loss", should_stop=lambda: len(rounds) > 0,
              progress=lambda done, total, eta, rows: rounds.append(1) if len(rows) == units else None)
    table = info.value.table
    assert table is not None and len(table) == units and table.estimate.all()
    group = table.attrs["group_sizes"]["vision"]
    assert group > 1 and table["rank"].notna().all()
    p = plan(table, Budget(keep=0.5, towers=("vision",), strategy="global"))
    groups = [u for u in p.removed if u.kind == "neurons"]
    assert groups and any("ranked on 10 images per unit, round 1" in n for n in p.notes)
    pruned = mope.prune(tiny, p)
    width = {i: b.mlp.c_fc.out_features for i, b in enumerate(tiny.model.visual.transformer.resblocks)}
    for i, b in enumerate(pruned.model.visual.transformer.resblocks):  # each group takes its whole size
        assert b.mlp.c_fc.out_features == width[i] - group * sum(u.layer == i for u in groups)


def test_each_rounds_table_comes_with_the_scores_attrs(tiny):
    task = mope.load_task("shapes", n=40)
    tables = []
    final = score(tiny, task, towers=["vision"], schedule="anytime", first_round=10, cache=False, baselines=(),
                  metric="loss", on_table=tables.append)
    assert [t.attrs["anytime"]["round"] for t in tables] == list(range(1, len(tables) + 1)) and len(tables) > 2
    assert all(t.attrs["group_sizes"] == final.attrs["group_sizes"] and not t.attrs["anytime"]["done"] for t in tables)
    assert tables[0].estimate.all() and (tables[0].images_used == 10).all()
    assert (tables[-1].mope.values == final.mope.values).all()  # the last round's table is the exact one


def test_a_cached_table_of_the_earlier_anytime_version_is_not_resumed(tiny):
    task = mope.load_task("shapes", n=20)
    key = scoring._settle(tiny, task, ["vision"], KINDS, "loss", "fast", None, (), 0, "fp32", None)[-1]
    with open_cache("scores") as store:  # what the version that re-scored each round cached
        store.set(f"{key}/anytime", {"round": 1, "size": 16, "rows": [], "per_image": {}})
    df = score(tiny, task, towers=["vision"], metric="loss", baselines=(), schedule="anytime", first_round=16)
    assert len(df) == 14 and not df.estimate.any()


def test_anytime_bad_input(tiny):
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


def _table(mope_, se, level, top=64, kind="head", layer=0):
    n = len(mope_)
    return pd.DataFrame({"tower": ["vision"] * n, "kind": [kind] * n, "layer": [layer] * n, "mope": mope_,
                         "se": se, "level": level, "top": [top] * n, "params": [1.0] * n})


def test_schedule_rules():
    assert ladder(16, 64) == [16, 24, 36, 54, 64] and ladder(1, 5) == [1, 2, 3, 4, 5]
    assert ladder(16, 40, least=16) == [16, 32, 40]  # fewer than 16 new images cost as much as 16 (padding)
    ladders = {"vision": [16, 32, 64]}
    fresh = _table([np.nan] * 3, [np.nan] * 3, [0, 0, 16])
    assert list(next_levels(fresh, ladders)) == [16, 16, 16]  # unscored units first, nothing else
    # 8 units of one layer: plans at keep 0.75 / 0.5 / 0.25 remove 2 / 4 / 6 of them; cuts at 0.15, 0.35, 0.55
    table = _table([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 5.0], [0.03] * 7 + [0.0], [16] * 7 + [64])
    # 0.1 ± 0.06 and 0.2 ± 0.06 hold 0.15 (two standard errors), 0.3 / 0.4 hold 0.35, 0.5 / 0.6 hold 0.55
    assert list(contested(table)) == [False, True, True, True, True, True, True, False]
    assert list(next_levels(table, ladders)) == [16, 32, 32, 32, 32, 32, 32, 64]
    table["se"] = 0.001
    assert list(next_levels(table, ladders)) == [64] * 8  # no side open: everything to the whole set
    table["level"] = 64
    assert list(next_levels(table, ladders)) == [64] * 8  # finished


def test_global_cuts_follow_params_and_ties_go_to_the_loss():
    table = pd.concat([_table([0.0, 0.1, 0.9, 1.0], [0.01] * 4, [16] * 4),
                       _table([0.2, 0.3, 0.8, 0.85], [0.01] * 4, [16] * 4, kind="neurons")], ignore_index=True)
    table["params"] = [1.0] * 4 + [3.0] * 4  # 16 params: keep 0.5 removes 0.0, 0.1, 0.2, 0.3 (8 params)
    table["se"] = [0.01] * 4 + [0.01, 0.01, 0.01, 0.3]
    open_ = contested(table)
    assert open_[7]  # 0.85 ± 0.6 holds every cut of its layer and kind
    assert not open_[0] and not open_[2]
    tied = _table([0.0] * 4, [0.0] * 4, [16] * 4).assign(mope_loss=[0.1, 0.2, 0.3, 0.4])
    assert contested(tied).all()  # a cut between equal scores: every tied unit's side is open


def test_effective_se_shrinks_towards_the_pooled_spread():
    table = _table([0.0, 0.5, 0.1, 0.2], [0.0, 0.1, 0.1, np.inf], [16, 16, 16, 1])
    se = effective_se(table)
    assert se[0] > 0 and se[1] < 0.1 + 1e-12 and se[3] == np.inf  # se 0 from 16 agreeing images is not settled
    assert effective_se(table.assign(level=64, se=0.0)).tolist() == [0.0] * 4  # every image: exact
    assert standard_error(np.array([1.0, 0.0, 1.0, 0.0]), 4) == 0.0
    se = standard_error(np.array([1.0, 0.0, 1.0, 0.0]), 400)
    assert se == pytest.approx(np.std([1, 0, 1, 0], ddof=1) / 2 * np.sqrt(396 / 399))
    assert standard_error(np.array([0.5]), 400) == np.inf
    assert note(table.assign(estimate=False)) is None


@pytest.mark.parametrize("n, images, look", [(320, 17, False), (40, 3, True)])  # 320: 20 per unit by default
def test_a_first_table_budget_sizes_round_one(tiny, runs, monkeypatch, n, images, look):
    """first_table_seconds: round 1 runs as many images per unit as fit at the measured speed of a block; fewer than
    16 run unpadded as a first look (estimates only, run again padded later), and the final table is still exact."""
    task = mope.load_task("shapes", n=n)
    kw = dict(towers=["vision"], metric="acc1", baselines=(), cache=False)
    exact = score(tiny, task, **kw)
    reruns = sum(len(mope.units.tower_blocks(tiny.model, "vision")) - layer for layer in exact.layer)
    monkeypatch.setattr(scoring, "block_seconds", lambda clip, tower, samples=16: 1000.0)  # the run's own time: ~0
    runs.clear()
    tables = []
    done = score(tiny, task, schedule="anytime", first_table_seconds=1000.0 * reruns * (images + 0.5),
                 progress=lambda d, t, e, rows: tables.append(pd.DataFrame(rows)), **kw)
    first = next(t for t in tables if len(t) == len(exact))
    assert (first.images_used == images).all() and first.estimate.all() and (first["round"] == 1).all()
    second = next(t for t in tables if len(t) == len(exact) and t["round"].max() == 2)
    assert (second.images_used >= (16 if look else images)).all()
    hardest = set(scoring._Samples(scoring.FastScorer(tiny, task, "acc1", {"vision": 16}, "fp32"), "vision")
                  .images(images).tolist())
    for unit in exact.unit:  # each input once, the first look's images once more
        assert sorted(runs[unit]) == list(range(n))
        assert {i for i, count in runs[unit].items() if count > 1} == (hardest if look else set())
    cols = COLUMNS + ["mope_loss"]
    pd.testing.assert_frame_equal(done[cols], exact[cols])
    with pytest.raises(mope.MopeError, match="mope.score: first_table_seconds must be a number"):
        score(tiny, task, schedule="anytime", first_table_seconds=0, **kw)


def test_budgeted_first_is_the_most_images_that_fit():
    assert budgeted_first(10.0, lambda n: 3.0 * n, 16) == 3
    assert budgeted_first(1e9, lambda n: 3.0 * n, 16) == 16 and budgeted_first(-1.0, lambda n: 3.0 * n, 16) == 1


def test_the_first_look_shrinks_when_the_machine_slows_down(tiny, monkeypatch):
    """The first look re-fits its images per unit before each layer to the time left at the speed seen so far."""
    task = mope.load_task("shapes", n=40)
    now = [0.0]
    monkeypatch.setattr(scoring, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(scoring, "block_seconds", lambda clip, tower, samples=16: 1.0)
    original = scoring.FastScorer.sample_outputs

    def slow(self, group, inputs):  # each layer takes 10x the time planned for it
        now[0] += 10 * sum(len(scoring.tower_blocks(tiny.model, u.tower)) - u.layer for u in group) * len(inputs.index)
        return original(self, group, inputs)

    monkeypatch.setattr(scoring.FastScorer, "sample_outputs", slow)
    units = scoring.unit_table(tiny, ["vision"], baselines=())
    reruns = int((len(scoring.tower_blocks(tiny.model, "vision")) - units.layer).sum())
    tables = []
    score(tiny, task, towers=["vision"], metric="acc1", baselines=(), cache=False, schedule="anytime",
          first_table_seconds=reruns * 3.5, progress=lambda d, t, e, rows: tables.append(pd.DataFrame(rows)))
    first = next(t for t in tables if len(t) == len(units))
    assert set(first.images_used[first.layer == 0]) == {3} and set(first.images_used[first.layer > 0]) == {1}


def test_a_stop_during_the_first_look_keeps_its_rows_and_resumes_to_exact(tiny, monkeypatch):
    task = mope.load_task("shapes", n=44)  # a size no other test caches scores for
    kw = dict(towers=["vision"], metric="acc1", baselines=())
    monkeypatch.setattr(scoring, "block_seconds", lambda clip, tower, samples=16: 1000.0)
    reruns = int((len(scoring.tower_blocks(tiny.model, "vision")) - scoring.unit_table(tiny, ["vision"]).layer).sum())
    polls = []
    with pytest.raises(Cancelled, match="stopped in round 1") as info:
        score(tiny, task, schedule="anytime", first_table_seconds=1000.0 * reruns * 2.5,
              should_stop=lambda: polls.append(1) or len(polls) > 1, **kw)
    assert 0 < len(info.value.rows) < 14 and all(r["images_used"] == 2 and r["estimate"] for r in info.value.rows)
    done = score(tiny, task, schedule="anytime", first_table_seconds=1000.0 * reruns * 2.5, **kw)
    exact = score(tiny, task, cache=False, **kw)
    pd.testing.assert_frame_equal(done[COLUMNS + ["mope_loss"]], exact[COLUMNS + ["mope_loss"]])


def test_the_first_look_runs_the_text_tower_on_its_real_length(tiny, monkeypatch):
    """A first look on the text tower runs the prompts cut to the longest one (mope.short_text, timed as that much
    cheaper): estimates within rounding of the full-length look's; round 2 runs them at full length, ending exact."""
    task = mope.load_task("shapes", n=40)
    kw = dict(towers=["text"], metric="loss", baselines=())
    monkeypatch.setattr(scoring, "block_seconds", lambda clip, tower, samples=16: 1000.0)
    tokens = tiny.tokenizer(task_texts(task))
    length, context = scoring.short_length(tiny.model, tokens), tokens.shape[1]
    assert length < context
    reruns = int((len(scoring.tower_blocks(tiny.model, "text")) - scoring.unit_table(tiny, ["text"]).layer).sum())
    budget = 1000.0 * reruns * len(task.classnames) * length / context * 1.5  # one template per class fits, shortened
    widths = []
    original = scoring.FastScorer.sample_outputs
    monkeypatch.setattr(scoring.FastScorer, "sample_outputs",
                        lambda self, group, inputs: widths.append(inputs.tokens.shape[1]) or original(self, group, inputs))

    def first_table(**extra):
        tables = []
        done = score(tiny, task, schedule="anytime", first_table_seconds=budget, cache=False,
                     progress=lambda d, t, e, rows: tables.append(pd.DataFrame(rows)), **kw, **extra)
        return next(t for t in tables if len(t) == len(done)), done

    short, done = first_table()
    looked = len(short.layer.unique())
    assert widths[:looked] == [length] * looked and set(widths[looked:]) == {context}
    assert short.estimate.all() and (short.texts_used == len(task.classnames)).all()  # one template per class
    pd.testing.assert_frame_equal(done[COLUMNS], score(tiny, task, cache=False, **kw)[COLUMNS])
    monkeypatch.setattr(scoring, "short_length", lambda model, tokens: None)  # the same look at full length
    full, _ = first_table()
    assert (full.texts_used == len(task.classnames)).all()
    np.testing.assert_allclose(short.mope, full.mope, atol=1e-5)
    assert short.mope.abs().max() > 1e-3  # the units' estimates are far larger than the rounding


def test_a_first_look_over_both_towers_ends_exact(tiny, monkeypatch):
    task = mope.load_task("shapes", n=40)
    kw = dict(metric="acc1", baselines=())
    monkeypatch.setattr(scoring, "block_seconds", lambda clip, tower, samples=16: 1000.0)
    tables = []
    done = score(tiny, task, schedule="anytime", first_table_seconds=1e6, cache=False,
                 progress=lambda d, t, e, rows: tables.append(pd.DataFrame(rows)), **kw)
    first = next(t for t in tables if len(t) == len(done))
    assert set(first.tower) == {"vision", "text"} and first.estimate.all()
    assert (first.images_used[first.tower == "vision"] < 16).all()  # a first look
    cols = COLUMNS + ["mope_loss"]
    pd.testing.assert_frame_equal(done[cols], score(tiny, task, cache=False, **kw)[cols])


def test_from_round_2_the_loss_counts_the_images_not_run_at_their_first_order_increase(tiny, monkeypatch):
    """acc1 (ties broken by the loss): after round 1 one backward pass gives every vision unit its first-order loss
    increase per image; from round 2 an estimate's mope_loss is the exact increase on the images it ran plus that
    on the others (acc1 still counts them unchanged), the rows say first_order and the plan's note says so."""
    task = mope.load_task("shapes", n=40)
    kw = dict(towers=["vision"], metric="acc1", baselines=())
    passes = []
    monkeypatch.setattr(scoring, "loss_increases", lambda *a, **k: passes.append(1) or first_order.loss_increases(*a, **k))
    tables = []
    score(tiny, task, schedule="anytime", first_round=10, cache=False, on_table=tables.append, **kw)
    exact = score(tiny, task, **kw)
    assert len(passes) == 1 and len(tables) >= 3
    assert not tables[0]["first_order"].any()  # round 1: before the pass
    second = tables[1].set_index("unit")
    rough = second[second.estimate]
    assert len(rough) and rough.first_order.all() and not second[~second.estimate].first_order.any()
    scorer = scoring.FastScorer(tiny, task, "acc1", exact.attrs["group_sizes"], "fp32")
    with torch.inference_mode():
        order = scorer.image_order("vision", scorer.image_losses("vision")).tolist()
    state, units = scorer.tower_state("vision"), [u for u in scoring.enumerate_units(tiny.model, ["vision"]) if u.name in rough.index]
    fill = first_order.loss_increases(tiny.model, "vision", units, exact.attrs["group_sizes"]["vision"], [(
        len(task), lambda: zeroshot_stats("loss", scorer.encode("vision", state["inputs"].batch(0, len(task)).clone())[:len(task)],
                                          state["other"].clone(), task.labels, scorer.scale))])
    hit, loss = scoring.per_image(exact).loc[rough.index], scoring.per_image(exact, "mope_loss").loc[rough.index]
    moved = [abs(row[order[int(rough.images_used[u.name]):]].sum().item()) / len(task) for u, row in zip(units, fill)]
    assert max(moved) > 1e-3  # the fill changes the estimates: the comparison below tells the two apart
    for unit, row in zip(units, fill):
        ran, rest = order[:int(rough.images_used[unit.name])], order[int(rough.images_used[unit.name]):]
        assert rough.mope[unit.name] == pytest.approx(hit.loc[unit.name, ran].sum() / len(task), abs=1e-6)
        expected = (loss.loc[unit.name, ran].sum() + row[rest].sum().item()) / len(task)
        assert rough.mope_loss[unit.name] == pytest.approx(expected, abs=1e-5), unit
    assert "first-order estimates" in note(tables[1]) and "first-order" not in note(tables[0])


def test_retrieval_and_the_text_tower_count_the_inputs_not_run_as_unchanged(tiny, monkeypatch):
    monkeypatch.setattr(scoring, "loss_increases", lambda *a, **k: pytest.fail("no first-order pass here"))
    tables = []
    score(tiny, mope.load_task("shapes", protocol="retrieval", n=37), schedule="anytime", first_round=9, cache=False,
          metric="loss", baselines=(), on_table=tables.append)
    score(tiny, mope.load_task("shapes", n=40), towers=["text"], schedule="anytime", first_round=10, cache=False,
          metric="acc1", baselines=(), on_table=tables.append)
    assert len(tables) > 2 and not any(t["first_order"].any() for t in tables)


def test_a_restart_after_the_first_order_pass_keeps_it(tiny, monkeypatch):
    """The pass is cached with the rounds: a run stopped in round 3 continues without a second backward pass, its
    next estimates still count the images not run at their first-order increase, and it ends at the exact table."""
    task = mope.load_task("shapes", n=80)
    kw = dict(towers=["vision"], metric="acc1", baselines=(), schedule="anytime", first_round=10)
    passes, tables = [], []
    monkeypatch.setattr(scoring, "loss_increases", lambda *a, **k: passes.append(1) or first_order.loss_increases(*a, **k))
    with pytest.raises(Cancelled, match="stopped in round 3"):
        score(tiny, task, on_table=tables.append, should_stop=lambda: len(tables) >= 2, **kw)
    done = score(tiny, task, on_table=tables.append, **kw)
    resumed = tables[2]
    assert len(passes) == 1 and resumed.estimate.any() and resumed[resumed.estimate].first_order.all()
    exact = score(tiny, task, towers=["vision"], metric="acc1", baselines=(), cache=False)
    pd.testing.assert_frame_equal(done[COLUMNS + ["mope_loss"]], exact[COLUMNS + ["mope_loss"]])


def test_a_stop_during_the_first_order_pass_runs_it_again_on_restart(tiny, monkeypatch):
    task = mope.load_task("shapes", n=72)  # not the cached table of the test above
    kw = dict(towers=["vision"], metric="acc1", baselines=(), schedule="anytime", first_round=10)
    passes, tables = [], []
    monkeypatch.setattr(scoring, "loss_increases", lambda *a, **k: passes.append(1) or first_order.loss_increases(*a, **k))
    with pytest.raises(Cancelled, match="stopped in round 2"):  # the pass asks should_stop before its first chunk
        score(tiny, task, on_table=tables.append, should_stop=lambda: bool(passes), **kw)
    assert len(tables) == 1
    score(tiny, task, on_table=tables.append, **kw)
    assert len(passes) == 2 and tables[1].estimate.any() and tables[1][tables[1].estimate].first_order.all()
