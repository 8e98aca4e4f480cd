import json

import pytest
import torch

import mope
from mope import pipeline, scoring
from mope.errors import MopeError
from mope.pipeline import plan_total, prune_model, removal_shares, rescore_count, step_counts, step_targets
from mope.planning import Budget
from mope.scoring import FastScorer, unit_table
from mope.surgery import prune_units
from mope.units import Unit, enumerate_units, tower_blocks, unit_flops


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return mope.load_model(str(tiny_dir), device="cpu")


def test_prune_model_width_then_depth_rescores_layers(tiny):
    task = mope.load_task("shapes", n=8)
    pruned = prune_model(tiny, task, Budget(keep=0.6, layers=1, towers=("vision",)), metric="loss", cache=False,
                         baselines=())
    steps = pruned.info["plan"]
    assert len(steps) == 2 and all(n.count(".") == 2 for n in steps[0]["removed"])
    assert [n for n in steps[1]["removed"]] in (["vision.L0"], ["vision.L1"])
    assert len(tower_blocks(pruned.model, "vision")) == 1


def test_step_targets_even_and_geometric_end_at_keep():
    assert step_targets(0.25, 4) == [0.8125, 0.625, 0.4375, 0.25]
    geo = step_targets(0.25, 2, "geometric")
    assert geo[0] == pytest.approx(0.5) and geo[-1] == pytest.approx(0.25)
    assert step_counts(5, 4) == [1, 1, 2, 1] and sum(step_counts(7, 3)) == 7
    # a geometric schedule splits explicit counts as it splits the kept size: more early
    assert removal_shares(0.25, 2) is None and removal_shares(0.25, 2, "geometric") == pytest.approx([2 / 3, 1.0])
    assert step_counts(4, 2, removal_shares(0.25, 2, "geometric")) == [3, 1]
    assert step_counts(7, 4, [0.5, 0.5, 0.9, 1.0]) == [4, 0, 2, 1]


@pytest.mark.parametrize("steps, schedule, message", [(0, "even", "steps must be"), (-2, "even", "steps must be"),
                                                      (2.5, "even", "steps must be"), (2, "cubic", "unknown step schedule")])
def test_bad_steps_are_clear_errors(tiny, steps, schedule, message):
    with pytest.raises(MopeError, match=message):
        prune_model(tiny, mope.load_task("shapes", n=4), Budget(keep=0.5), steps=steps, step_schedule=schedule)


def test_iterative_rescores_the_pruned_model_between_steps(tiny):
    task = mope.load_task("shapes", n=8)
    budget = Budget(keep=0.5, towers=("vision",), strategy="global")
    calls = []
    real = pipeline.score

    def spy(clip, *a, **kw):
        calls.append((clip, kw["group_size"]))
        return real(clip, *a, **kw)

    scores = mope.score(tiny, task, towers=["vision"], units=["head", "neurons"], metric="loss", cache=False,
                        baselines=(), group_size=16)
    pipeline.score = spy
    try:
        pruned = prune_model(tiny, task, budget, scores=scores, steps=3, metric="loss", cache=False, baselines=())
    finally:
        pipeline.score = real
    # steps 2 and 3 re-score the pruned models, with the neuron groups of the first table
    assert len(calls) == 2 and all(c is not tiny and g == 16 for c, g in calls)
    record = pruned.info["iterative"]["record"]
    assert [r["step"] for r in record] == [1, 2, 3] and len(pruned.info["plan"]) == 3
    # step 2's units are named in the source model's indices: none of them was removed at step 1
    assert not set(record[0]["removed"]) & set(record[1]["removed"])
    # the three steps together reach the budget as closely as the one-shot plan does
    one_shot = mope.plan(scores, budget)
    kept = record[-1]["kept_after"]["vision"]
    assert kept < 1 and pruned.info["iterative"]["targets"]["vision"][-1] == 0.5
    full = plan_total(scores, "vision", "params")
    iterative_after = full - sum(scores.set_index("unit").loc[list(r["removed"]), "params"].sum() for r in record)
    assert abs(iterative_after / full - 0.5) <= abs(one_shot.sizes["vision"]["params_after"] / full - 0.5) + 0.1


@pytest.mark.parametrize("keep, steps, schedule", [(0.4, 2, "even"), (0.6, 3, "even"), (0.6, 4, "geometric")])
def test_uniform_iterative_ends_with_the_one_shot_layout(tiny, keep, steps, schedule):
    """Re-scoring decides which units go, not how many of each kind: the steps share out the heads and neuron groups
    per layer of the one-shot plan, so only the choice within each layer can differ."""
    task = mope.load_task("shapes", n=8)
    budget = Budget(keep=keep, towers=("vision",))
    scores = mope.score(tiny, task, towers=["vision"], units=["head", "neurons"], metric="loss", cache=False,
                        baselines=())
    one_shot = mope.plan(scores, budget).removed
    pruned = prune_model(tiny, task, budget, scores=scores, steps=steps, step_schedule=schedule, metric="loss",
                         cache=False, baselines=())
    record = pruned.info["iterative"]["record"]
    removed = [Unit.parse(u) for r in record for u in r.get("removed", {})]

    def per_layer(units, kind):
        return sorted(sum(u.layer == layer and u.kind == kind for u in units) for layer in (0, 1))

    layout = pruned.info["iterative"]["layout"]["vision"]
    for kind, name in (("head", "heads"), ("neurons", "neurons")):
        assert per_layer(removed, kind) == per_layer(one_shot, kind) == [layout[name]] * 2
    assert layout["heads"] and layout["neurons"]  # (each step choosing its own split: 3 heads, no group at 0.6)
    assert pruned.info["iterative"]["targets"]["vision"][-1] == pytest.approx(keep)


def test_a_model_unchanged_since_its_scores_is_not_rescored(tiny, monkeypatch):
    """keep 0.6 in 3 steps: 1 head and 1 neuron group per layer go at step 2; steps 1 and 3 round to nothing. Step 2
    ranks by the first table (the model did not change), step 3 re-scores the model step 2 pruned."""
    task = mope.load_task("shapes", n=8)
    scores = mope.score(tiny, task, towers=["vision"], units=["head", "neurons"], metric="loss", cache=False,
                        baselines=())
    calls, real = [], pipeline.score

    def spy(clip, *a, **kw):
        calls.append(clip)
        return real(clip, *a, **kw)

    monkeypatch.setattr(pipeline, "score", spy)
    pruned = prune_model(tiny, task, Budget(keep=0.6, towers=("vision",)), scores=scores, steps=3, metric="loss",
                         cache=False, baselines=())
    record = pruned.info["iterative"]["record"]
    assert ["removed" in r for r in record] == [False, True, False]
    assert record[1]["scored_on"] == {"images": "all", "units": len(scores)}
    assert len(calls) == 1 and calls[0] is not tiny
    first = scores.set_index("unit")["mope"]
    assert record[1]["removed"] and all(v == first[u] for u, v in record[1]["removed"].items())


def test_iterative_matches_the_ablated_source_model(tiny):
    """The units recorded in source indices are exactly what the pruned model lacks."""
    task = mope.load_task("shapes", n=8)
    pruned = prune_model(tiny, task, Budget(keep=0.5, towers=("vision",)), steps=2, metric="loss", cache=False,
                         baselines=())
    record = pruned.info["iterative"]["record"]
    removed = [Unit.parse(u) for r in record for u in r["removed"]]
    again = prune_units(tiny, removed, pruned.info["plan"][0]["group_sizes"])
    images = torch.stack([tiny.preprocess(task.pil_image(i)) for i in range(4)])
    with torch.no_grad():
        assert torch.equal(again.model.encode_image(images), pruned.model.encode_image(images))


def test_iterative_saves_its_schedule(tiny, tmp_path):
    task = mope.load_task("shapes", n=8)
    pruned = prune_model(tiny, task, Budget(keep=0.6, towers=("vision",)), steps=2, step_schedule="geometric",
                         metric="loss", cache=False, baselines=())
    mope.save_pruned(pruned, tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "pruning.json").read_text())["iterative"]
    assert saved["steps"] == 2 and saved["step_schedule"] == "geometric" and len(saved["record"]) == 2


def test_more_steps_than_units_is_a_clear_error(tiny):
    with pytest.raises(MopeError, match="prunable heads and neuron groups: use fewer steps"):
        prune_model(tiny, mope.load_task("shapes", n=4), Budget(keep=0.5), steps=10_000, metric="loss", cache=False,
                    baselines=())


def _iterative_run(tiny, margin, keep=0.6):
    """An iterative run with the re-scoring calls spied on: (pruned model, [(model, only) per re-scoring])."""
    task = mope.load_task("shapes", n=8)
    calls, real = [], pipeline.score

    def spy(clip, *a, **kw):
        calls.append((clip, kw.get("only")))
        return real(clip, *a, **kw)

    pipeline.score = spy
    try:
        pruned = prune_model(tiny, task, Budget(keep=keep, towers=("vision",), strategy="global"), steps=3,
                             rescore_margin=margin,
                             metric="loss", cache=False, baselines=())
    finally:
        pipeline.score = real
    return pruned, calls[1:]  # the first call is the one-shot table


def test_iterative_rescores_only_the_pool_and_removes_only_from_it(tiny):
    pruned, calls = _iterative_run(tiny, margin=1.5)
    assert len(calls) == 2
    for model, only in calls:
        everything = unit_table(model, ["vision"], ["head", "neurons"], baselines=())["unit"]
        assert only is not None and 0 < len(only) < len(everything)  # a pool, not the whole model
    group_sizes = pruned.info["plan"][0]["group_sizes"]
    for step, (model, only) in zip(pruned.info["iterative"]["record"][1:], calls):
        # a later step removes only units re-scored on the model it pruned (the others rank +inf)
        pool = {pipeline.source_unit(Unit.parse(n), model.info.get("structure"), group_sizes).name for n in only}
        assert step["removed"] and set(step["removed"]) <= pool
        assert all(v < float("inf") for v in step["removed"].values())
    assert pruned.info["iterative"]["rescore_margin"] == 1.5


def test_a_pool_wider_than_the_model_is_the_full_rescoring(tiny):
    every, calls_all = _iterative_run(tiny, margin=None)
    wide, calls_wide = _iterative_run(tiny, margin=50.0)
    assert all(only is None for _, only in calls_all + calls_wide)
    assert [r["removed"] for r in every.info["iterative"]["record"]] == \
        [r["removed"] for r in wide.info["iterative"]["record"]]


@pytest.mark.parametrize("margin", [0.5, 0, -1, float("inf"), float("nan"), True, "2"])
def test_a_bad_rescore_margin_is_a_clear_error(tiny, margin):
    with pytest.raises(MopeError, match="rescore_margin must be a number ≥ 1"):
        prune_model(tiny, mope.load_task("shapes", n=4), Budget(keep=0.5), steps=2, rescore_margin=margin)


def _rescored_on_subsets(tiny, images, steps=3):
    task = mope.load_task("shapes", n=16)
    pruned = prune_model(tiny, task, Budget(keep=0.5, towers=("vision",), strategy="global"), steps=steps,
                         rescore_images=images, metric="loss", cache=False, baselines=())
    return task, pruned


def test_intermediate_rescores_run_on_the_hardest_images_and_equal_a_sweep_on_them(tiny):
    task, pruned = _rescored_on_subsets(tiny, images=6)
    record = pruned.info["iterative"]["record"]
    group_sizes = pruned.info["plan"][0]["group_sizes"]
    assert record[0]["scored_on"]["images"] == "all" and pruned.info["iterative"]["rescore_images"] == 6
    before = [Unit.parse(u) for u in record[0]["removed"]]
    for step in record[1:]:
        model = prune_units(tiny, before, group_sizes)  # the model this step pruned
        # its 6 calibration images with the highest loss (anytime scoring's order: where an ablation moves most)
        losses = FastScorer(model, task, "loss", {}, "fp32").image_losses("vision")
        hardest = sorted(torch.argsort(-losses, stable=True)[:6].tolist())
        assert step["scored_on"]["images"] == hardest
        # the scores the step ranked by are an exact sweep of that model on just those images, bit for bit
        sweep = mope.score(model, task.at(torch.tensor(hardest)), towers=["vision"], units=["head", "neurons"],
                           metric="loss", cache=False, baselines=(), group_size=group_sizes["vision"])
        assert step["scored_on"]["units"] == len(sweep)
        named = {pipeline.source_unit(Unit.parse(u), model.info.get("structure"), group_sizes).name: v
                 for u, v in zip(sweep["unit"], sweep["mope"])}
        assert step["removed"] and all(named[u] == v for u, v in step["removed"].items())
        before += [Unit.parse(u) for u in step["removed"]]


def test_the_images_follow_anytime_scorings_order_for_the_metric(tiny):
    """The highest loss first for the loss metric; for a hit metric (acc1) the images nearest the decision."""
    task = mope.load_task("shapes", n=16)
    for metric in ("loss", "acc1"):
        order = FastScorer(tiny, task, metric, {}, "fp32").image_order("vision", FastScorer(
            tiny, task, "loss", {}, "fp32").image_losses("vision"))
        assert pipeline.rescore_sample(tiny, task, 5, {"metric": metric})[0].tolist() == sorted(order[:5].tolist())
    assert pipeline.rescore_sample(tiny, task, 16, {"metric": "loss"}) == (None, None)  # every image: no subset


def _embedding_prompts(tiny, monkeypatch, share: bool):
    """An iterative run on 6 of 16 images (3 steps), counting the passes of the class prompts through the text tower;
    share=False: each re-scoring embeds them itself (score() without classifier=), as before they were shared."""
    task = mope.load_task("shapes", n=16)
    scores = mope.score(tiny, task, towers=["vision"], units=["head", "neurons"], metric="loss", cache=False,
                        baselines=())
    calls, real = [], scoring.task_text_embeddings
    monkeypatch.setattr(scoring, "task_text_embeddings", lambda *a: calls.append(a[0]) or real(*a))
    if not share:
        monkeypatch.setattr(scoring.FastScorer, "classifier", lambda self: None)
    pruned = prune_model(tiny, task, Budget(keep=0.5, towers=("vision",), strategy="global"), scores=scores, steps=3,
                         rescore_images=6, metric="loss", cache=False, baselines=())
    monkeypatch.undo()
    return pruned.info["iterative"]["record"], calls


def test_the_class_prompts_are_embedded_once_and_the_scores_are_the_same_bit_for_bit(tiny, monkeypatch):
    """The text tower is not pruned: its class embeddings from the first image choice serve every re-scoring."""
    shared, once = _embedding_prompts(tiny, monkeypatch, share=True)
    alone, each = _embedding_prompts(tiny, monkeypatch, share=False)
    assert len(once) == 1 and len(each) == 4  # 2 re-scorings x (image choice + sweep)
    assert [r["removed"] for r in shared] == [r["removed"] for r in alone] and all(r["removed"] for r in shared)
    assert [r["scored_on"] for r in shared] == [r["scored_on"] for r in alone]


@pytest.mark.parametrize("images, total, count", [(None, 16, 16), (16, 16, 16), (99, 16, 16), (3, 16, 3), (1.0, 16, 16),
                                                  (0.5, 64, 32), (0.01, 64, 16), (0.25, 128, 32), (0.25, 10, 10)])
def test_rescore_images_as_a_count_or_a_fraction(images, total, count):
    """A count (at most every image), a fraction (at least MIN_ROWS = 16: fewer cost as much), or every image."""
    assert rescore_count(images, total) == count


def test_every_image_is_the_full_rescoring(tiny):
    _, every = _rescored_on_subsets(tiny, images=None)
    _, counted = _rescored_on_subsets(tiny, images=16)
    assert all(r["scored_on"]["images"] == "all" for r in every.info["iterative"]["record"])
    assert [r["removed"] for r in every.info["iterative"]["record"]] == \
        [r["removed"] for r in counted.info["iterative"]["record"]]


def test_sweep_flops_count_each_unit_and_the_blocks_it_re_runs(tiny):
    sizes = {"vision": 8, "text": 16}
    blocks = {t: len(tower_blocks(tiny.model, t)) for t in sizes}
    expected = sum(sum(unit_flops(tiny.model, Unit(u.tower, "layer", b), sizes[u.tower])
                       for b in range(u.layer, blocks[u.tower]))
                   for u in enumerate_units(tiny.model, list(sizes), ["head", "neurons"], group_sizes=sizes))
    assert pipeline.sweep_flops(tiny, sizes) == expected > 0


def test_auto_rescore_images_keep_the_rescorings_within_one_sweep_and_give_smaller_models_more(tiny):
    """The default: each re-scoring runs what an equal share of one full sweep's FLOPs buys on its model."""
    task = mope.load_task("shapes", n=96)
    pruned = prune_model(tiny, task, Budget(keep=0.25, towers=("vision",), strategy="global"), steps=4, metric="loss",
                         cache=False, baselines=())
    record, sizes = pruned.info["iterative"]["record"], pruned.info["plan"][0]["group_sizes"]
    assert pruned.info["iterative"]["rescore_images"] == "auto"
    before, counts, work = [Unit.parse(u) for u in record[0]["removed"]], [], 0
    for step in record[1:]:
        model = prune_units(tiny, before, sizes)  # the model this step re-scored
        images = step["scored_on"]["images"]
        counts.append(len(task) if images == "all" else len(images))
        assert counts[-1] == pipeline.auto_rescore_count(tiny, model, ["vision"], sizes["vision"], len(task), 4)
        work += counts[-1] * pipeline.sweep_flops(model, {"vision": sizes["vision"]})
        before += [Unit.parse(u) for u in step["removed"]]
    assert counts == sorted(counts) and counts[0] < counts[-1] and counts[0] < len(task)
    assert work <= pipeline.RESCORE_WORK * pipeline.sweep_flops(tiny, {"vision": sizes["vision"]}) * len(task)


@pytest.mark.parametrize("images", [0, -1, 1.5, 0.0, -0.5, True, "8", "some", float("nan"), float("inf")])
def test_bad_rescore_images_are_a_clear_error(tiny, images):
    with pytest.raises(MopeError, match="rescore_images must be a count >= 1 or a fraction in"):
        prune_model(tiny, mope.load_task("shapes", n=4), Budget(keep=0.5), steps=2, rescore_images=images)


def test_a_pruned_models_neuron_group_is_named_by_its_size_or_refused(tiny):
    width = tower_blocks(tiny.model, "vision")[0].mlp.c_fc.out_features
    group = width // 4
    pruned = prune_units(tiny, [Unit("vision", "neurons", 0, 0)], {"vision": group})
    structure = pruned.info["structure"]
    # the pruned model's first group of layer 0 is the source's second: group 0 went
    assert pipeline.source_unit(Unit("vision", "neurons", 0, 0), structure, {"vision": group}) == \
        Unit("vision", "neurons", 0, 1)
    with pytest.raises(MopeError, match="without its group size"):
        pipeline.source_unit(Unit("vision", "neurons", 0, 0), structure, {})
    assert pipeline.source_unit(Unit("vision", "head", 0, 0), structure, {}) == Unit("vision", "head", 0, 0)
