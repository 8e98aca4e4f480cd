"""The library's public calls obey the CLI's rules (mope.rules): a bad number or list is one MopeError naming the
call, the argument and what is allowed, before any work starts (issue 11: DistillConfig(steps=0) trained for 0
steps and wrote a model; evaluate(batch_size=0) and interleaved_latency(repeats=0) crashed with a traceback)."""
import numpy as np
import pytest

import mope
from mope import rules, validate
from mope.distill import DistillConfig
from mope.planning import Budget
from mope.speed import interleaved_latency
from mope.stability import plan_stability
from mope.study import compression_curve


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return mope.load_model(str(tiny_dir), device="cpu")


@pytest.fixture(scope="module")
def world(tiny):
    task = mope.load_task("shapes", n=8)
    return tiny, task, mope.score(tiny, task, towers=["vision"], units=["head", "neurons"], baselines=())


@pytest.fixture
def no_work(monkeypatch):
    """Any model run fails the test: a refusal must come before the work."""
    monkeypatch.setattr("mope.scoring.FastScorer.run", lambda *a, **k: pytest.fail("work started"))
    monkeypatch.setattr("mope.evaluation.image_embeddings", lambda *a, **k: pytest.fail("work started"))
    monkeypatch.setattr("mope.speed._shared_inputs", lambda *a, **k: pytest.fail("work started"))


CALLS = {
    "DistillConfig(steps=0)": (lambda w: DistillConfig(steps=0), "DistillConfig: steps must be a whole number from 1"),
    "DistillConfig(steps=-3)": (lambda w: DistillConfig(steps=-3), "DistillConfig: steps must be"),
    "DistillConfig(batch_size=0)": (lambda w: DistillConfig(batch_size=0), "batch_size must be a whole number from 1"),
    "DistillConfig(checkpoint_every=0)": (lambda w: DistillConfig(checkpoint_every=0), "checkpoint_every must be"),
    "DistillConfig(lr=0)": (lambda w: DistillConfig(lr=0.0), "lr must be a number in \\(0"),
    "DistillConfig(hidden=-1)": (lambda w: DistillConfig(hidden=-1.0), "hidden must be a number in \\[0"),
    "DistillConfig(workers=-1)": (lambda w: DistillConfig(workers=-1), "workers must be"),
    "DistillConfig(steps='5')": (lambda w: DistillConfig(steps="5"), "steps must be a whole number"),
    "DistillConfig(precision='fp8')": (lambda w: DistillConfig(precision="fp8"), "precision must be one of auto"),
    "load_task(n=-5)": (lambda w: mope.load_task("shapes", n=-5), "load_task: n must be a whole number from 1"),
    "load_task(n=0)": (lambda w: mope.load_task("shapes", n=0), "load_task: n must be"),
    "load_task(seed=-1)": (lambda w: mope.load_task("shapes", n=4, seed=-1), "load_task: seed must be"),
    "score(group_size=0)": (lambda w: mope.score(w[0], w[1], group_size=0, cache=False), "group_size must be"),
    "score(batch_tokens=0)": (lambda w: mope.score(w[0], w[1], batch_tokens=0, cache=False), "batch_tokens must be"),
    "score(seed=-1)": (lambda w: mope.score(w[0], w[1], seed=-1, cache=False), "score: seed must be"),
    "score(first_round=0)": (lambda w: mope.score(w[0], w[1], schedule="anytime", first_round=0, cache=False),
                             "first_round must be"),
    "score(towers=[])": (lambda w: mope.score(w[0], w[1], towers=[], cache=False), "towers takes a comma list"),
    "score(units='')": (lambda w: mope.score(w[0], w[1], units="", cache=False), "units takes a comma list"),
    "evaluate(batch_size=0)": (lambda w: mope.evaluate(w[0], w[1], batch_size=0), "evaluate: batch_size must be"),
    "plan(keep=0)": (lambda w: mope.plan(w[2], Budget(keep=0)), r"keep \(vision\) must be a number in \(0, 1\]"),
    "plan(keep=1.5)": (lambda w: mope.plan(w[2], Budget(keep=1.5)), r"keep \(vision\) must be a number in \(0, 1\]"),
    "plan(keep='abc')": (lambda w: mope.plan(w[2], Budget(keep="abc")), "keep .vision. must be"),
    "plan(keep=nan)": (lambda w: mope.plan(w[2], Budget(keep=float("nan"))), "keep .vision. must be"),
    "plan(keep={'text': 2})": (lambda w: mope.plan(w[2], Budget(keep={"text": 2.0})), r"keep \(text\) must be"),
    "plan(heads=1.5)": (lambda w: mope.plan(w[2], Budget(heads=1.5)), "heads .vision. must be a whole number"),
    "plan(heads='2')": (lambda w: mope.plan(w[2], Budget(heads="2")), "heads .vision. must be a whole number"),
    "plan(layers=-1)": (lambda w: mope.plan(w[2], Budget(layers=-1)), "layers .vision. must be"),
    "plan(floor=-1)": (lambda w: mope.plan(w[2], Budget(keep=0.5, strategy="global", floor=-1)), "floor must be"),
    "plan(towers=())": (lambda w: mope.plan(w[2], Budget(keep=0.5, towers=())), "towers takes a comma list"),
    "plan(towers=('audio',))": (lambda w: mope.plan(w[2], Budget(keep=0.5, towers=("audio",))), "unknown: 'audio'"),
    "prune_model(steps=0)": (lambda w: mope.prune_model(w[0], w[1], Budget(keep=0.5), scores=w[2], steps=0),
                             "prune_model: steps must be a whole number from 1"),
    "prune_model(keep=2)": (lambda w: mope.prune_model(w[0], w[1], Budget(keep=2.0), scores=w[2]), "keep .vision."),
    "compression_curve(removed=(1.5,))": (lambda w: compression_curve(w[0], w[2], w[1], removed=(1.5,)),
                                          "compression_curve: each of removed must be a number in"),
    "compression_curve(iterative=(0,))": (lambda w: compression_curve(w[0], w[2], w[1], iterative=(0,), calibration=w[1]),
                                          "each of iterative must be"),
    "plan_stability(resamples=0)": (lambda w: plan_stability(w[2], Budget(keep=0.5), None, resamples=0),
                                    "plan_stability: resamples must be"),
    "interleaved_latency(repeats=0)": (lambda w: interleaved_latency({"a": w[0]}, repeats=0), "repeats must be"),
    "interleaved_latency(batch=0)": (lambda w: interleaved_latency({"a": w[0]}, batch=0), "batch must be"),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_a_bad_argument_of_a_public_call_is_one_clear_error(world, no_work, call):
    fn, message = CALLS[call]
    with pytest.raises(mope.MopeError, match=message) as e:
        fn(world)
    assert "\n" not in str(e.value) and (" got " in str(e.value) or "unknown: " in str(e.value))


def test_good_arguments_still_pass(world):
    clip, task, scores = world
    assert DistillConfig(steps=1, eval_every=10**9, checkpoint_every=10**9, workers=0).steps == 1
    assert mope.plan(scores, Budget(keep=np.float64(0.5), towers="vision")).removed  # numpy numbers, a tower as text
    assert mope.plan(scores, Budget(heads=np.int64(1))).removed
    assert list(mope.score(clip, task, towers="vision", units="heads", baselines=()).kind.unique()) == ["head"]


def test_the_cli_and_the_library_share_one_rule_per_name():
    """Not written twice: every numeric rule the CLI and job params use is the library's object."""
    for name, rule in rules.NUMBERS.items():
        found = validate.RULES[name]
        assert found is rule or getattr(found, "each", None) is rule, name
