import pytest
import torch
from conftest import DEVICE

import mope
from mope.evaluation import (
    classification_metrics,
    classifier,
    retrieval_metrics,
    text_embeddings,
)


def test_perfect_classifier_scores_one():
    labels = torch.tensor([0, 1, 2, 2, 1])
    logits = torch.nn.functional.one_hot(labels, 3).float()
    m = classification_metrics(logits, labels)
    assert m == {"acc1": 1.0, "acc5": 1.0, "mean_per_class_recall": 1.0}


def test_classification_hand_computed():
    labels = torch.tensor([0, 0, 0, 1, 2, 5])
    logits = torch.zeros(6, 7)
    logits[0, 0] = 1                      # right
    logits[1, 3] = 1                      # top-2
    logits[1, 0] = 0.5
    logits[2] = torch.tensor([-1, .1, .2, .3, .4, .5, .6])  # wrong: label 0 ranks last
    logits[3, 1] = 1                      # right
    logits[4, 2] = 1                      # right
    logits[5] = torch.tensor([.6, .5, .4, .3, .2, -1, .1])  # wrong: label 5 ranks last
    m = classification_metrics(logits, labels)
    assert m["acc1"] == pytest.approx(3 / 6)
    assert m["acc5"] == pytest.approx(4 / 6)
    # class 0: 1/3, class 1: 1, class 2: 1, class 5: 0
    assert m["mean_per_class_recall"] == pytest.approx((1 / 3 + 1 + 1 + 0) / 4)


def test_retrieval_hand_computed():
    # 3 images, 4 texts; text j belongs to image owner[j]
    owner = torch.tensor([0, 0, 1, 2])
    sim = torch.tensor([
        [0.1, 0.9, 0.5, 0.0],   # image 0: best text 1 (own) → hit@1
        [0.8, 0.2, 0.3, 0.1],   # image 1: order 0,2,... own text 2 at rank 2
        [0.7, 0.6, 0.45, 0.4],  # image 2: own text 3 last (rank 4)
    ])
    m = retrieval_metrics(sim, owner, ks=(1, 2, 5))
    assert m["text_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert m["text_retrieval_recall@2"] == pytest.approx(2 / 3)
    assert m["text_retrieval_recall@5"] == pytest.approx(1.0)
    # text queries: t0 ranks images 1, 2, 0 (own image 0 third); t1 → image 0 (hit);
    # t2 ranks 0, 2, 1 (own image 1 third); t3 → image 2 (hit)
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 4)
    assert m["image_retrieval_recall@2"] == pytest.approx(2 / 4)
    assert m["image_retrieval_recall@5"] == pytest.approx(1.0)


def test_template_ensembling_is_mean_of_normalized_then_renormalized(tiny_dir):
    clip = mope.load_model(str(tiny_dir), device=DEVICE)
    templates = ["a {}", "a photo of a {}"]
    got = classifier(clip, ["cat", "dog"], templates)
    e = text_embeddings(clip, ["a cat", "a photo of a cat"])
    want = e.mean(0) / e.mean(0).norm()
    assert torch.allclose(got[0], want, atol=1e-6)
    assert torch.allclose(got.norm(dim=1), torch.ones(2))


def test_results_do_not_depend_on_batch_size(tiny_dir):
    clip = mope.load_model(str(tiny_dir), device=DEVICE)
    task = mope.load_task("shapes", n=40)
    a, b = mope.evaluate(clip, task, batch_size=7), mope.evaluate(clip, task, batch_size=40)
    assert a == pytest.approx(b, abs=1e-6)


def test_per_class_accuracy_side_by_side_lost_most_first(monkeypatch):
    import importlib
    from types import SimpleNamespace

    ev = importlib.import_module("mope.evaluation")

    task = SimpleNamespace(protocol="zeroshot", labels=torch.tensor([0, 0, 1, 1, 2, 2, 2]),
                           classnames=["red", "blue", "green", "unused"])
    predictions = {"orig": torch.tensor([0, 0, 1, 1, 2, 2, 0]), "pruned": torch.tensor([0, 1, 1, 1, 0, 0, 0]),
                   "distilled": torch.tensor([1, 1, 1, 1, 2, 2, 2])}
    monkeypatch.setattr(ev, "top1_predictions", lambda clip, task, batch_size=64: predictions[clip])
    df = ev.per_class_accuracy({n: n for n in predictions}, task)
    assert list(df["class"]) == ["red", "green", "blue"]  # red lost 1.0 (distilled), green 2/3, blue nothing
    red = df.iloc[0]
    assert (red.images, red.orig, red.pruned, red.distilled) == (2, 1.0, 0.5, 0.0)
    assert red.change == pytest.approx(-1.0) and df.iloc[1].change == pytest.approx(-2 / 3)
    assert df.iloc[2].change == 0.0


def test_per_class_accuracy_agrees_with_acc1(tiny_dir):
    from mope.evaluation import per_class_accuracy

    clip = mope.load_model(str(tiny_dir), device=DEVICE)
    task = mope.load_task("shapes:target=colour", n=48)
    df = per_class_accuracy({"tiny": clip}, task)
    assert df.images.sum() == 48
    assert (df.tiny * df.images).sum() / 48 == pytest.approx(mope.evaluate(clip, task)["acc1"])
    with pytest.raises(mope.MopeError, match="classification task"):
        per_class_accuracy({"tiny": clip}, mope.load_task("shapes", protocol="retrieval", n=8))
