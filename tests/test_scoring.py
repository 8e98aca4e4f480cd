import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DEVICE, TORCHRUN_DEVICE, subprocess_env

import mope
from mope import scoring
from mope.cache import open_cache
from mope.scoring import Cancelled, baseline_correlations, load_scores, save_scores, score
from mope.units import KINDS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOPE_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return mope.load_model(str(tiny_dir), device=DEVICE)


@pytest.mark.parametrize("kind, metric", [("zeroshot", "loss"), ("zeroshot", "acc1"), ("retrieval", "loss"),
                                          ("retrieval", "recall_mean")])
def test_fast_equals_naive_on_tiny(tiny, kind, metric):
    task = mope.load_task("shapes", protocol=kind, n=24)
    fast = score(tiny, task, metric=metric, baselines=(), cache=False)
    naive = score(tiny, task, metric=metric, impl="naive", baselines=(), cache=False)
    assert list(fast.unit) == list(naive.unit)
    assert np.allclose(fast.mope, naive.mope, atol=1e-5)
    assert fast.mope.abs().max() > 0


def test_fast_equals_naive_and_ranks_identically_on_demo():
    clip = mope.load_model("demo", device=DEVICE)
    task = mope.load_task("shapes", n=64)
    kw = dict(metric="loss", units=["head", "layer"], baselines=(), cache=False)
    fast, naive = score(clip, task, **kw), score(clip, task, impl="naive", **kw)
    assert np.abs(fast.mope - naive.mope).max() < 1e-5
    assert (fast.mope.round(4).rank(method="min") == naive.mope.round(4).rank(method="min")).all()


def test_table_columns_and_meaning(tiny):
    task = mope.load_task("shapes", n=16)
    df = score(tiny, task, metric="loss", cache=False)
    for col in ["tower", "kind", "layer", "index", "unit", "mope", "base", "ablated", "params", "flops",
                "magnitude", "random", "taylor"]:
        assert col in df.columns
    assert np.allclose(df.mope, df.ablated - df.base)  # a loss: MoPE is its increase
    acc = score(tiny, task, metric="acc1", baselines=(), cache=False)
    assert np.allclose(acc.mope, acc.base - acc.ablated)


def test_cache_hit_and_misses(tiny, monkeypatch):
    task = mope.load_task("shapes", n=16)
    first = score(tiny, task, metric="loss")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scoring.FastScorer, "run", lambda *a: pytest.fail("should come from the cache"))
        again = score(tiny, task, metric="loss")
    pd.testing.assert_frame_equal(first, again)
    assert again.attrs == first.attrs
    calls = []
    original = scoring.FastScorer.run
    monkeypatch.setattr(scoring.FastScorer, "run", lambda self, *a: calls.append(1) or original(self, *a))
    score(tiny, mope.load_task("shapes", n=17), metric="loss")
    score(tiny, task, metric="acc1")
    with torch.no_grad():
        tiny.model.visual.proj.mul_(1.0001)
    try:
        score(tiny, task, metric="loss")
    finally:
        with torch.no_grad():
            tiny.model.visual.proj.div_(1.0001)
    assert len(calls) == 3


def test_progress_partial_rows_and_cancel(tiny):
    task = mope.load_task("shapes", n=16)
    seen = []
    score(tiny, task, towers=["text"], metric="loss", cache=False, baselines=(),
          progress=lambda done, total, eta, rows: seen.append((done, total, eta, len(rows))))
    assert seen[-1][0] == seen[-1][1] == 10 and all(d == r for d, _, _, r in seen)
    assert all(e >= 0 for _, _, e, _ in seen) and [s[0] for s in seen] == sorted(s[0] for s in seen)
    polls = []
    with pytest.raises(Cancelled) as info:
        score(tiny, task, towers=["vision"], units=["head"], metric="loss", cache=False, baselines=(),
              should_stop=lambda: polls.append(1) or len(polls) > 1)
    assert 0 < len(info.value.rows) < 8
    table = info.value.table  # the rows so far as a table with the scores' attrs
    assert list(table.unit) == [r["unit"] for r in info.value.rows] and table.attrs["metric"] == "loss"
    assert table.attrs["group_sizes"] == score(tiny, task, towers=["vision"], units=["head"], metric="loss",
                                                 baselines=(), cache=False).attrs["group_sizes"]


@pytest.mark.parametrize("impl", ["fast", "naive"])
def test_a_stopped_exact_sweep_continues_after_its_last_finished_layer_bit_for_bit(tiny, monkeypatch, tmp_path, impl):
    monkeypatch.setenv("MOPE_HOME", str(tmp_path))  # a cache of its own: no earlier test's table is found
    task = mope.load_task("shapes", n=20)
    kw = dict(towers=["vision"], metric="acc1", baselines=(), impl=impl)
    ran = [[]]  # per call: the units scored
    for cls in (scoring.FastScorer, scoring.NaiveScorer):
        real = cls.score_chunk
        monkeypatch.setattr(cls, "score_chunk", lambda self, chunk, real=real: ran[-1].extend(
            u.name for u in chunk) or real(self, chunk))
    with pytest.raises(Cancelled, match="the finished layers' work is cached") as info:
        score(tiny, task, should_stop=lambda: len(ran[-1]) >= 3, **kw)  # stops after a group of >= 3 units
    before = [r["unit"] for r in info.value.rows]
    assert before == ran[0] and 0 < len(before) < 14
    ran.append([])
    done = score(tiny, task, **kw)
    assert set(ran[1]).isdisjoint(before) and sorted(before + ran[1]) == sorted(done.unit)  # nothing twice
    exact = score(tiny, task, cache=False, **kw)
    pd.testing.assert_frame_equal(done, exact)
    if impl == "fast":  # the per-image results too, restored for the units before the stop
        for column in ("mope", "mope_loss"):
            matrix = scoring.per_image(done, column)
            assert np.allclose(matrix.loc[done.unit].mean(axis=1).values, exact[column].values, atol=1e-6)
    key = scoring._settle(tiny, task, ["vision"], KINDS, "acc1", impl, None, (), 0, "fp32", None)[-1]
    with open_cache("scores") as store:  # a finished sweep's groups are dropped: the table is cached whole
        assert f"{key}/sweep" not in store and not any(k.startswith(f"{key}/sweep/") for k in store.iterkeys())


def test_a_stop_waits_for_one_batched_pass_at_most(tiny):
    task = mope.load_task("shapes", n=16)
    polls = []
    with pytest.raises(Cancelled) as info:  # 16 images × 17 tokens: one head per batched pass
        score(tiny, task, towers=["vision"], units=["head"], metric="loss", cache=False, baselines=(),
              batch_tokens=16 * 17, should_stop=lambda: polls.append(1) or len(polls) > 1)
    assert info.value.rows == [] and info.value.table.empty and len(polls) == 2  # stopped inside layer 0, after its first head's pass


@pytest.mark.parametrize("kw, message", [
    (dict(units=["attention"]), "units takes .*unknown: .attention."), (dict(towers=["audio"]), "towers takes .*unknown: .audio."),
    (dict(group_size=48), "does not divide"), (dict(metric="text_retrieval_recall@1"), "has no metric"),
    (dict(precision="bf16"), "for GPUs"),
])
def test_bad_input_fails_before_work(tiny, kw, message, monkeypatch):
    monkeypatch.setattr(scoring.FastScorer, "run", lambda *a: pytest.fail("work started"))
    with pytest.raises(mope.MopeError, match=message):
        score(tiny, mope.load_task("shapes", n=8), cache=False, **kw)
    with pytest.raises(mope.MopeError, match="no images"):
        score(tiny, _empty_task(), cache=False)


def _empty_task():
    task = mope.load_task("shapes", n=8)
    task.images, task.labels = task.images[:0], task.labels[:0]
    return task


def test_correlations():
    df = pd.DataFrame({"tower": ["vision"] * 4, "kind": ["head"] * 4, "mope": [0.1, 0.4, 0.2, 0.3],
                       "magnitude": [1, 4, 2, 3], "random": [4, 1, 3, 2], "taylor": [1, 2, 3, 4]})
    c = baseline_correlations(df).iloc[0]
    assert c["magnitude"] == pytest.approx(1) and c["random"] == pytest.approx(-1) and c["taylor"] == pytest.approx(0.4)


def test_scores_file_round_trip(tiny, tmp_path):
    df = score(tiny, mope.load_task("shapes", n=8), metric="loss", baselines=(), cache=False)
    save_scores(df, tmp_path / "s.csv")
    back = load_scores(tmp_path / "s.csv")
    assert back.attrs["fingerprint"] == df.attrs["fingerprint"] and np.allclose(back.mope, df.mope)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(mope.MopeError, match="not a scores CSV"):
        load_scores(tmp_path / "bad.csv")


def test_cli_and_torchrun_two_processes_match_one(tiny_dir, tmp_path):
    env = subprocess_env(tmp_path / "h", OMP_NUM_THREADS="1")
    args = ["score", "--model", str(tiny_dir), "--n", "16", "--metric", "loss", "--no-cache", "--quiet",
            "--device", TORCHRUN_DEVICE]
    one = subprocess.run([sys.executable, "-m", "mope", *args, "--out", str(tmp_path / "one.csv")],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert one.returncode == 0, one.stderr
    assert "Spearman" in one.stdout
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "mope", "--",
                          *args, "--out", str(tmp_path / "two.csv")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert two.returncode == 0, two.stderr
    a, b = load_scores(tmp_path / "one.csv"), load_scores(tmp_path / "two.csv")
    assert list(a.unit) == list(b.unit) and a.attrs["fingerprint"] == b.attrs["fingerprint"]
    for col in ["mope", "magnitude", "random", "taylor", "params"]:
        assert np.allclose(a[col], b[col], atol=1e-6), col


def test_batched_ablations_do_not_change_results(tiny):
    task = mope.load_task("shapes", n=12)
    one = score(tiny, task, metric="loss", baselines=(), cache=False, batch_tokens=1)
    many = score(tiny, task, metric="loss", baselines=(), cache=False, batch_tokens=10**6)
    assert np.allclose(one.mope, many.mope, atol=1e-6)


@pytest.mark.parametrize("kind, metric", [("zeroshot", "acc1"), ("zeroshot", "loss"),
                                          ("zeroshot", "mean_per_class_recall"), ("retrieval", "recall_mean"),
                                          ("retrieval", "loss")])
def test_chunked_equals_unchunked_bit_for_bit(tiny, kind, metric):
    task = mope.load_task("shapes", protocol=kind, n=23)
    kw = dict(metric=metric, baselines=(), cache=False)
    whole = score(tiny, task, chunk=10**6, **kw)
    for chunk in (5, 16):  # 23 = 4 × 5 + 3 and 16 + 7: neither divides the set
        part = score(tiny, task, chunk=chunk, **kw)
        assert list(part.unit) == list(whole.unit)
        assert (part.mope.values == whole.mope.values).all(), chunk
        assert (part.base.values == whole.base.values).all()


def test_per_image_means_are_the_scores(tiny):
    task = mope.load_task("shapes", n=20)
    for metric in ("acc1", "loss", "mean_per_class_recall"):
        df = score(tiny, task, metric=metric, baselines=(), chunk=6)
        matrix = scoring.per_image(df)
        assert list(matrix.index) == list(df.unit) and matrix.shape[1] == 20
        assert np.allclose(matrix.mean(axis=1).values, df.mope.values, atol=1e-5)
    assert scoring.per_image(score(tiny, task, metric="loss", baselines=(), cache=False, impl="naive")) is None


def _recorded_pass_rows(monkeypatch) -> list[int]:
    """The rows (images × ablations) of every batched ablation pass score() runs from now on, as they run."""
    rows = []

    class Recording(scoring.MaskedBlock):
        def __init__(self, block, x, *masks):
            rows.append(len(x))
            super().__init__(block, x, *masks)

    monkeypatch.setattr(scoring, "MaskedBlock", Recording)
    return rows


def test_memory_does_not_grow_with_the_calibration_set(tiny, monkeypatch):
    """Every forward pass holds at most one chunk × the ablations one pass batches, whatever N."""
    rows = _recorded_pass_rows(monkeypatch)
    for n in (20, 60):
        score(tiny, mope.load_task("shapes", n=n), towers=["vision"], metric="acc1",
              baselines=(), cache=False, chunk=16, batch_tokens=16 * 17 * 2)
        assert max(rows) == 32, n  # two ablations of one 16-image chunk (17 tokens each) per pass
        rows.clear()


@pytest.mark.parametrize("kw, message", [(dict(chunk=0), "chunk must be a whole number from 1"),
                                         (dict(chunk=-3), "chunk must be a whole number from 1"),
                                         (dict(max_memory=-1.0), r"max_memory must be a number in \(0")])
def test_bad_memory_knobs(tiny, kw, message, monkeypatch):
    monkeypatch.setattr(scoring.FastScorer, "run", lambda *a: pytest.fail("work started"))
    with pytest.raises(mope.MopeError, match=message):
        score(tiny, mope.load_task("shapes", n=8), cache=False, **kw)


def test_max_memory_sets_the_pass_size(tiny):
    task = mope.load_task("shapes", n=12)
    small = score(tiny, task, metric="loss", baselines=(), cache=False, max_memory=0.0001)
    big = score(tiny, task, metric="loss", baselines=(), cache=False, max_memory=4.0)
    assert (small.mope.values == big.mope.values).all()
    assert scoring.memory_tokens(tiny.model, "vision", 0.0001) < scoring.memory_tokens(tiny.model, "vision", 4.0)


def test_a_cpu_caps_the_default_pass_without_changing_results(tiny, monkeypatch):
    """On a CPU the default pass holds what CPU_PASS_GIB allows (here a tiny cap: one 16-image chunk of 17 tokens)."""
    if tiny.device.type != "cpu":
        pytest.skip("the cap is a CPU default (a GPU's default pass is TOKEN_BUDGET: test_pass_tokens_rules)")
    task = mope.load_task("shapes", n=40)
    kw = dict(towers=["vision"], metric="loss", baselines=(), cache=False)
    uncapped = score(tiny, task, batch_tokens=10**6, **kw)
    rows = _recorded_pass_rows(monkeypatch)
    monkeypatch.setattr(scoring, "CPU_PASS_GIB", 16 * 17 * scoring.pass_bytes_per_token(tiny.model, "vision") / 2**30)
    capped = score(tiny, task, **kw)
    assert max(rows) == 16
    assert (capped.mope.values == uncapped.mope.values).all()


def test_pass_tokens_rules(tiny):
    """max_memory wins over batch_tokens, batch_tokens over the default; a GPU's default is TOKEN_BUDGET."""
    cap = scoring.memory_tokens(tiny.model, "vision", 0.001)
    assert scoring.pass_tokens(tiny, ["vision"], 500, 0.001) == cap
    assert scoring.pass_tokens(tiny, ["vision"], 500, None) == 500
    assert scoring.pass_tokens(tiny, ["vision"]) == min(scoring.TOKEN_BUDGET, scoring.memory_tokens(
        tiny.model, "vision", scoring.CPU_PASS_GIB))
    gpu = dataclasses.replace(tiny, device=torch.device("meta"))
    assert scoring.pass_tokens(gpu, ["vision"]) == scoring.TOKEN_BUDGET


def test_accuracy_tables_carry_the_loss_that_breaks_their_ties(tiny):
    task = mope.load_task("shapes", n=16)
    acc = score(tiny, task, metric="acc1", baselines=(), cache=False)
    loss = score(tiny, task, metric="loss", baselines=(), cache=False)
    assert (acc.mope_loss.values == loss.mope.values).all()  # the same ablations, both metrics
    assert "mope_loss" not in loss.columns
    for _, part in acc.groupby("tower"):
        assert sorted(part["rank"]) == list(range(1, len(part) + 1))
        top = part.sort_values(["mope", "mope_loss"], ascending=False).iloc[0]
        assert top["rank"] == 1


def test_projected_sweep_time(tiny):
    task = mope.load_task("shapes", n=10)
    # vision: 2 layers; layer 0's 7 units re-run 2 blocks, layer 1's 7 units 1; 10 images each
    assert scoring.sweep_cost(tiny, task, towers=["vision"]) == {"vision": (7 * 2 + 7 * 1) * 10}
    assert scoring.sweep_cost(tiny, task, towers=["text"], units=["layer"]) == {"text": (2 + 1) * 64 * 5}
    assert scoring.projected_seconds(tiny, task, towers=["vision"]) > 0


def test_scoring_only_some_units_gives_their_rows_of_the_full_table(tiny):
    task = mope.load_task("shapes", n=12)
    whole = score(tiny, task, towers=["vision"], units=["head", "neurons"], metric="loss", baselines=())
    names = list(whole.unit[::3])
    part = score(tiny, task, towers=["vision"], units=["head", "neurons"], metric="loss", baselines=(), only=names)
    assert list(part.unit) == names and part.attrs["fingerprint"] != whole.attrs["fingerprint"]
    same = whole.set_index("unit").loc[names]
    for column in ("mope", "base", "ablated", "params", "flops"):
        assert (part[column].to_numpy() == same[column].to_numpy()).all(), column
    matrix = scoring.per_image(part)  # its own per-image results, found by its own fingerprint
    assert list(matrix.index) == names


GOOD_SCORES = ("# fingerprint: \"abc\"\ntower,kind,layer,index,unit,mope,params,magnitude\n"
               "vision,head,0,1,vision.L0.head1,0.5,100,0.2\nvision,layer,1,0,vision.L1,0.1,200,\n")


@pytest.mark.parametrize("edit, message", [
    (("0.5,100", "abc,100"), "mope must be a number, got 'abc'"),
    ((",params,magnitude", ",magnitude"), "missing columns \\['params'\\]"),
    (("vision,head,0", "vision,head,x"), "layer must be a whole number ≥ 0, got 'x'"),
    (("vision,head,0", "vision,head,-1"), "layer must be a whole number"),
    (("vision,head,0", "vision,head,1.5"), "layer must be a whole number"),
    ((",0.2\n", ",zz\n"), "magnitude must be a number"),
    (("vision,head", "audio,head"), "tower must be one of vision, text"),
])
def test_a_hand_edited_scores_csv_names_its_first_bad_row(tmp_path, edit, message):
    path = tmp_path / "s.csv"
    path.write_text(GOOD_SCORES.replace(*edit))
    with pytest.raises(mope.MopeError, match=message):
        mope.load_scores(path)


def test_a_scores_csv_loads_with_numbers_as_numbers(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(GOOD_SCORES)
    df = mope.load_scores(path)
    assert df["layer"].dtype.kind == "i" and df["mope"].dtype.kind == "f" and df.attrs["fingerprint"] == "abc"


def test_a_cache_that_cannot_be_used_is_a_warning_not_the_end_of_the_work(tiny, monkeypatch):
    """Issue 11 re-run: on a full disk the scores cache failed first (sqlite 'disk I/O error', a traceback from
    prune); the cache only saves work, so scoring carries on without it and says so."""
    import sqlite3

    import diskcache

    task = mope.load_task("shapes", n=8)
    expected = score(tiny, task, towers=["vision"], units=["head"], metric="loss", baselines=(), cache=False)

    def io_error(*a, **kw):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(diskcache.Cache, "get", io_error)
    monkeypatch.setattr(diskcache.Cache, "set", io_error)
    with pytest.warns(UserWarning, match="scores cache .* could not be used .*disk I/O error"):
        df = score(tiny, task, towers=["vision"], units=["head"], metric="loss", baselines=())
    assert (df.mope.to_numpy() == expected.mope.to_numpy()).all()
    with pytest.warns(UserWarning, match="could not be used"):
        assert scoring.per_image(df) is None
