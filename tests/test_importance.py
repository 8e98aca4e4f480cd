import pytest
import torch
from conftest import DEVICE

import mope
from mope import importance, study
from mope.cli import build_parser
from mope.evaluation import contrastive_loss
from mope.planning import Budget, plan
from mope.scoring import baseline_correlations, score, unit_table
from mope.units import Unit, check_group_size, enumerate_units, unit_weights


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return mope.load_model(str(tiny_dir), device=DEVICE)


def test_registry_lists_mope_first_and_every_baseline():
    assert importance.names() == ("mope", "magnitude", "random", "taylor")
    assert importance.baselines() == ("magnitude", "random", "taylor")
    assert importance.baselines(needs_task=False) == ("magnitude", "random")
    assert importance.labels()["mope"] == "MoPE" and importance.labels()["taylor"] == "Taylor"
    with pytest.raises(mope.MopeError, match="unknown baseline 'l1'; use magnitude, random, taylor"):
        importance.check_baselines(["l1"])


def test_every_criterion_has_one_signature(tiny):
    task = mope.load_task("shapes", n=8)
    units = enumerate_units(tiny.model, ("vision",), ("head", "neurons"))
    group_sizes = check_group_size(tiny.model, ("vision",), None)
    for name in importance.names():
        values = importance.criterion(name)(tiny, units, group_sizes, task=task, seed=0)
        assert len(values) == len(units) and all(isinstance(v, float) for v in values), name
    with pytest.raises(mope.MopeError, match="Taylor criterion needs a task"):
        importance.criterion("taylor")(tiny, units, group_sizes)


def test_mope_criterion_is_what_score_computes(tiny):
    task = mope.load_task("shapes", n=8)
    df = score(tiny, task, towers=("text",), cache=False, baselines=())
    units = [Unit.parse(n) for n in df.unit]
    got = importance.criterion("mope")(tiny, units, df.attrs["group_sizes"], task=task)
    assert got == df["mope"].tolist()


def _negative_magnitude(clip, units, group_sizes, task=None, seed=0):
    return [-v for v in importance.magnitude(clip, units, group_sizes)]


def test_a_registered_criterion_reaches_score_plan_study_and_cli(tiny, monkeypatch):
    monkeypatch.setitem(importance.REGISTRY, "antimag",
                        importance.Criterion("antimag", "anti-magnitude", _negative_magnitude))
    task = mope.load_task("shapes", n=8)
    df = score(tiny, task, towers=("vision",), units=("head",), metric="loss", cache=False)
    assert (df["antimag"] == -df["magnitude"]).all()
    assert "antimag" in baseline_correlations(df).columns
    assert "antimag" in unit_table(tiny, towers=("vision",)).columns
    by_anti = plan(df, Budget(heads=1, towers=("vision",)), by="antimag").removed
    by_mag = plan(df, Budget(heads=1, towers=("vision",)), by="magnitude").removed
    assert set(by_anti).isdisjoint(by_mag)
    assert study.ranking_names(["mope", "antimag"]) == {"MoPE": "mope", "anti-magnitude": "antimag"}
    assert "antimag" in build_parser().parse_args(["score"]).baselines.split(",")


def test_baselines_by_hand(tiny):
    task = mope.load_task("shapes", n=16)
    df = score(tiny, task, metric="loss", cache=False, seed=3).set_index("unit")
    block = tiny.model.visual.transformer.resblocks[1]
    w_in, w_out = block.attn.in_proj_weight.detach(), block.attn.out_proj.weight.detach()
    rows = [r for j in range(3) for r in range(j * 64 + 32, j * 64 + 48)]  # head 2, head_dim 16, width 64
    want = torch.sqrt((w_in[rows] ** 2).sum() + (w_out[:, 32:48] ** 2).sum())
    assert df.loc["vision.L1.head2", "magnitude"] == pytest.approx(want.item(), rel=1e-5)
    again = score(tiny, task, metric="loss", cache=False, seed=3).set_index("unit")
    assert (again["random"] == df["random"]).all()
    assert not (score(tiny, task, metric="loss", cache=False, seed=4)["random"].values == df["random"].values).any()
    # Taylor: |w · dL/dw| summed over the unit, with the loss over the whole set in one pass
    model = tiny.model
    with torch.enable_grad():
        loss = contrastive_loss(task, _grad_images(tiny, task), _grad_text(tiny, task), model.logit_scale.exp().detach())
        params = [p for p, _ in unit_weights(model, Unit("text", "neurons", 1, 1), 64)]
        grads = torch.autograd.grad(loss, params)
    idx = [i for _, i in unit_weights(model, Unit("text", "neurons", 1, 1), 64)]
    want = sum((p.detach()[i] * g[i]).abs().sum() for p, g, i in zip(params, grads, idx))
    assert df.loc["text.L1.neurons1", "taylor"] == pytest.approx(want.item(), rel=1e-4)


def _grad_images(clip, task):
    x = torch.stack([clip.preprocess(task.pil_image(i)) for i in range(len(task))]).to(clip.device)
    return clip.model.encode_image(x, normalize=True)


def _grad_text(clip, task):
    from mope.evaluation import ensemble
    prompts = [t.format(c) for c in task.classnames for t in task.templates]
    return ensemble(clip.model.encode_text(clip.tokenizer(prompts).to(clip.device), normalize=True), len(task.classnames))


def test_taylor_of_a_frozen_model_equals_the_unfrozen_and_leaves_it_frozen(tiny_dir):
    """A distillation teacher is frozen (requires_grad off); Taylor scores of it must not fail or differ."""
    clip = mope.load_model(str(tiny_dir), device=DEVICE)
    task = mope.load_task("shapes", n=8)
    units = enumerate_units(clip.model, ["vision"], ["head"])
    group_sizes = check_group_size(clip.model, ["vision"], None)
    want = importance.criterion("taylor")(clip, units, group_sizes, task=task)
    clip.model.requires_grad_(False)
    assert importance.criterion("taylor")(clip, units, group_sizes, task=task) == want
    assert not any(p.requires_grad for p in clip.model.parameters())
