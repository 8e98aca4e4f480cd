"""The app's handlers, end to end on a tiny model with jobs run in this process; then the served page."""
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import DEVICE
from PIL import Image

import mope
from app import figures
from app.choices import CALIBRATION, EVALUATION
from app.handlers import compare as hc
from app.handlers import jobs as hj
from app.handlers import model as hm
from app.handlers import prune as hp
from app.handlers import scores as hs
from app.security import check_spec, unpack_zip
from app.session import NEW_SESSION
from app.state import AppState
from app.tabs import prune as prune_tab
from mope.jobs import run_job


@pytest.fixture
def settings(tmp_path, monkeypatch, tiny_dir):
    monkeypatch.setenv("MOPE_HOME", str(tmp_path / "home"))
    return AppState(model_dirs=[tiny_dir.parent], data_dirs=[tmp_path / "data"], upload_dirs=[tmp_path],
                    start_worker=False)


def run_queued(settings) -> list[dict]:
    """Run every queued job here, as the worker would; returns them finished."""
    store, done = settings.store(), []
    while (job := store.claim(os.getpid())) is not None:
        run_job(store, job)
        done.append(store.get(job["id"]))
    return done


def test_model_card_measures_the_model(settings, tiny_dir):
    headline, card = hm.model_card(str(tiny_dir), settings)
    assert list(card.tower) == ["vision", "text"] and card.loc[0, "heads / layer"] == "4"
    assert (card["GFLOPs / sample"] > 0).all() and (card["latency, batch 1 (ms)"] > 0).all()
    assert "M parameters" in headline


def test_local_paths_outside_the_model_folders_are_refused(settings, tiny_dir, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tiny_dir.parent / "escape").symlink_to(outside)
    for spec in (str(outside), f"local-dir:{outside}", f"ViT-B-32:{outside}/ckpt.pt", "ViT-B-32:ckpt.safetensors",
                 str(tiny_dir.parent / "escape"), str(tiny_dir.parent / ".." / "elsewhere")):
        with pytest.raises(mope.MopeError, match="outside the model folder"):
            check_spec(spec, settings)
    assert check_spec(f" {tiny_dir} ", settings) == str(tiny_dir)
    assert check_spec("ViT-B-32:openai", settings) == "ViT-B-32:openai"


def test_a_model_that_fails_to_load_is_a_message(settings):
    with pytest.raises(mope.MopeError, match="unknown model"):
        hm.model_card("ViT-B-99:nope", settings)


def test_scores_job_then_cached_scores_at_once(settings, tiny_dir):
    session = {**NEW_SESSION, "spec": str(tiny_dir)}
    source = next(iter(CALIBRATION))
    session, message = hs.start_scores(session, source, None, None, "", 16, ["vision"], settings)
    assert session["score_job"] and "Scoring started" in message
    _, df, total, line = hs.scores_state(session, settings)
    assert df.mope.isna().all() and total == len(df) == 14 and "queued" in line  # the empty grid, to fill in
    assert "the worker process is starting" in line and "16 images, towers vision" in line  # no silent wait
    [job] = run_queued(settings)
    assert job["status"] == "done" and len(job["partial"]) == job["result"]["units"]
    session, df, total, line = hs.scores_state(session, settings)
    assert session["score_job"] is None and session["scores"] and total is None
    assert set(df.kind) == {"head", "neurons", "layer"} and "units scored" in line
    assert "calibration **shapes" in line and "16 images, towers vision" in line  # what the scores came from
    assert hj.ended_line(job) == f"Job {job['id']} (score) finished."
    again, message = hs.start_scores({**session, "scores": None}, source, None, None, "", 16, ["vision"], settings)
    assert again["scores"] == session["scores"] and again["score_job"] is None and "Cached" in message


@pytest.fixture
def scored(settings, tiny_dir):
    session = {**NEW_SESSION, "spec": str(tiny_dir)}
    session, _ = hs.start_scores(session, next(iter(CALIBRATION)), None, None, "", 16, ["vision", "text"], settings)
    run_queued(settings)
    return hs.scores_state(session, settings)[0]


def test_heatmaps_fill_in_and_mark_what_the_plan_removes(settings, scored):
    df = hs.scores_table(scored["scores"], settings)
    clip = hm.get_model(scored["spec"], settings)
    partial = figures.heatmaps(hs.partial_scores(clip, ["vision", "text"], ["head", "neurons", "layer"],
                                                 df.iloc[:5].to_dict("records"), settings))
    z = np.asarray(partial.data[0].z, dtype=float)
    assert z.shape == (2, 4) and np.isnan(z).sum() == 4 and f"5/{len(df)} units scored" in partial.layout.title.text
    full = figures.heatmaps(df)
    assert len([t for t in full.data if t.type == "heatmap"]) == 4 and full.layout.height > 0
    assert "rank" in full.data[0].customdata[0][0] and "MoPE" in full.data[0].customdata[0][0]
    plan, table, _notes = hp.preview(df, hp.budget_of("keep fraction", 0.5, 1.0, "uniform", "params", 0, 0, 0, 0, 0,
                                                      0), "mope")
    row = table.set_index("tower").loc["vision"]
    assert row["params after"] < row["params before"] and plan.removed
    rho = hs.correlations(df)
    assert set(rho.kind) == {"head", "neurons", "layer"}  # whole layers get a ρ of their own
    scatter = figures.versus(df, "magnitude", rho)
    assert {t.xaxis for t in scatter.data if t.name.split()[1] == "layer"} == {"x2"}  # on their own axes
    marked = figures.heatmaps(df, removed={u.name for u in plan.removed})
    crosses = sum(len(t.x) for t in marked.data if t.type == "scatter")
    assert crosses == len([u for u in plan.removed if u.kind != "layer"])


def test_budget_controls_make_the_budget_they_show():
    b = hp.budget_of("explicit counts", 0.5, 0.5, "global", "flops", 1, 0, 2, 3, 0, 1)
    assert b.heads == {"vision": 2} and b.neurons == {"vision": 3, "text": 1} and b.layers == {"vision": 1}
    assert b.keep is None and b.strategy == "global" and b.measure == "flops" and b.towers == ("text", "vision")
    b = hp.budget_of("keep fraction", 0.4, 1.0, "uniform", "params", 0, 0, 5, 5, 5, 5)
    assert b.keep == {"vision": 0.4} and b.heads is None and b.towers == ("vision",)


def test_an_impossible_budget_is_a_message(settings, scored):
    df = hs.scores_table(scored["scores"], settings)
    with pytest.raises(mope.MopeError):
        hp.preview(df, hp.budget_of("explicit counts", 1, 1, "uniform", "params", 0, 0, 0, 0, 0, 0), "mope")
    every_head = hp.budget_of("explicit counts", 1, 1, "uniform", "params", 0, 0, 4, 0, 0, 0)
    for budget, message in ((hp.budget_of("keep fraction", 1, 1, "uniform", "params", 0, 0, 0, 0, 0, 0), "nothing"),
                            (every_head, "every head of the vision tower")):
        with pytest.raises(mope.MopeError, match=message):
            hp.preview(df, budget, "mope")
        with pytest.raises(mope.MopeError, match=message):  # refused before any job is queued
            hp.start_prune_distill(scored, budget, "mope", "cpu", 2, 4, "shapes", "x", settings)
    assert settings.store().jobs() == [] or all(j["kind"] == "score" for j in settings.store().jobs())


def test_the_preview_says_when_ties_decided_the_plan(settings, scored):
    """Units that score exactly the same as units kept in their place (acc1 on a few images: many exact zeros) were
    chosen by the tie-break: the preview's notes say so; with distinct scores they say nothing of ties."""
    df = hs.scores_table(scored["scores"], settings).copy()
    df["mope"] = np.random.default_rng(0).permutation(len(df)) / len(df)  # every score distinct
    two_heads = hp.budget_of("explicit counts", 1, 1, "uniform", "params", 0, 0, 2, 0, 0, 0)  # 2 of 4 per layer
    plan, _table, notes = hp.preview(df, two_heads, "mope")
    assert plan.ties == 0 and "ties" not in notes
    heads = (df.tower == "vision") & (df.kind == "head")
    df.loc[heads, "mope"] = 0.0  # each layer's 2 removed heads tie with its 2 kept ones
    plan, _table, notes = hp.preview(df, two_heads, "mope")
    layers = df.loc[heads, "layer"].nunique()
    assert plan.ties == 2 * layers and f"ties: {2 * layers} removed unit(s)" in notes


def test_a_figure_saves_as_png_and_its_table_as_csv(settings, scored, monkeypatch):
    """What a figure shows, as a PNG rendered by plotly's own renderer (kaleido, in a headless Chrome), and the
    table behind it as CSV; written once; without kaleido or a browser for it, a message that says what to do."""
    import shutil

    from app.handlers import exports as he

    if not shutil.which("chromium") and not shutil.which("google-chrome") and os.environ.get("MOPE_REQUIRE_BROWSER") != "1":
        pytest.skip("no Chrome or Chromium for kaleido (see .ci/run)")
    df = hs.scores_table(scored["scores"], settings)
    figure = figures.heatmaps(df)
    png = he.figure_png(figure, "heatmap", settings)
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(png).parent == settings.home / "downloads"
    assert he.figure_png(figure, "heatmap", settings) == png  # the same figure: the same file, not rendered again
    csv = he.table_csv(df, "scores", settings)
    assert pd.read_csv(csv).unit.tolist() == df.unit.tolist()
    with pytest.raises(mope.MopeError, match="nothing to save yet"):
        he.figure_png(None, "study", settings)

    def no_kaleido(*args, **kwargs):
        raise ValueError("Image export using the 'kaleido' engine requires the Kaleido package")

    monkeypatch.setattr(figure, "to_image", no_kaleido)
    figure.update_layout(title="another figure")
    with pytest.raises(mope.MopeError, match="needs kaleido and Chrome or Chromium"):
        he.figure_png(figure, "heatmap", settings)


def test_prune_and_distill_job_saves_a_model_to_compare_and_download(settings, scored, tiny_dir):
    budget = hp.budget_of("keep fraction", 0.5, 1.0, "uniform", "params", 0, 0, 0, 0, 0, 0)
    session, _message = hp.start_prune_distill(scored, budget, "mope", DEVICE, 4, 8, "shapes", "my model!", settings)
    controls = {k: v for k, v in zip(prune_tab.BUDGET, ["keep fraction", 0.5, 1.0, "uniform", "params"] + [0] * 6)}
    queued = prune_tab.follow(session, None, "mope", controls, settings)
    assert queued["jobs"].status.iloc[0] == "queued" and "saved" not in queued
    [job] = run_queued(settings)
    assert job["status"] == "done", job["error"]
    ended = prune_tab.follow(session, queued["prune_seen"], "mope", controls, settings)
    assert ended["jobs"].status.iloc[0] == "done" and ended["saved"]["value"] == job["result"]["model"]
    lines = {t.name: t for t in ended["loss_plot"].data}
    assert list(lines["acc1: teacher"].y) == [job["references"]["teacher"]["acc1"]] * 2
    assert lines["acc1"].x[0] == 0 and "acc1: pruned, before distillation" in lines
    line, curve, history, result = hj.job_state(session["pd_job"], settings)
    assert [c["step"] for c in curve] == [1, 2, 3, 4] and {"affinity", "feature", "hidden"} <= set(curve[0])
    assert history and "acc1" in history[-1] and "Saved" in line
    plan = hp.preview(hs.scores_table(scored["scores"], settings), budget, "mope")[0]
    pruned = mope.load_model(result["pruned"])
    assert pruned.info["plan"][0]["removed"] == [u.name for u in plan.removed]  # the previewed plan, exactly
    models = hm.saved_models(settings)
    assert result["model"] in models and result["pruned"] in models and "my-model-" in result["model"]
    archive = hp.model_zip(result["model"], settings)
    assert "pruning.json" in zipfile.ZipFile(archive).namelist()
    compared = hc.compare([str(tiny_dir), result["model"]], next(iter(EVALUATION)), 20, settings)
    table = compared.table
    assert table["params (M)"].iloc[1] < table["params (M)"].iloc[0] and "acc1" in table
    assert table.origin.iloc[0] == "original (not pruned)"
    assert table.origin.iloc[1].startswith(f"pruned from {tiny_dir}; plan by mope (keep") and "distilled 4 steps" in \
        table.origin.iloc[1]
    assert list(compared.per_class.columns[2:4]) == compared.models and (compared.per_class.change.diff().dropna() >= 0).all()
    assert hj.jobs_table(settings).loc[0, "status"] == "done"
    with pytest.raises(mope.MopeError, match="outside"):
        hp.model_zip(str(tiny_dir), settings)


def test_a_saved_model_shows_its_card_and_exports_to_onnx(settings, tiny_dir):
    from mope.surgery import prune_units
    from mope.units import Unit

    tiny = mope.load_model(str(tiny_dir), device="cpu")
    pruned = prune_units(tiny, [Unit("vision", "head", 0, 1), Unit("vision", "layer", 1)], {"vision": 64, "text": 64})
    folder = str(mope.save_pruned(pruned, settings.saved_dir / "run-1" / "final"))
    assert folder in hm.saved_models(settings)
    card = hp.model_card(folder, settings)
    assert card.startswith("# final") and "## How to load" in card and "library_name" not in card
    assert hp.export_status(folder, settings) == "" and hp.model_card(None, settings) == ""
    assert "Export to ONNX started" in hp.start_export(folder, settings)
    assert "queued" in hp.export_status(folder, settings)
    [job] = run_queued(settings)
    assert job["status"] == "done", job["error"]
    status = hp.export_status(folder, settings)
    assert status.startswith("Exported to ONNX (opset 23)") and "max |onnxruntime − torch|" in status
    assert (settings.saved_dir / "onnx" / "run-1-final" / "image.onnx").is_file()
    assert hp.onnx_folder(Path(folder), settings).name not in [Path(m).name for m in hm.saved_models(settings)]
    with pytest.raises(mope.MopeError, match="exported already"):
        hp.start_export(folder, settings)
    for bad, message in [(str(tiny_dir), "outside"), (None, "pick a saved model")]:
        with pytest.raises(mope.MopeError, match=message):
            hp.start_export(bad, settings)
    with pytest.raises(mope.MopeError, match="outside"):
        hp.model_card(str(tiny_dir), settings)


def test_cancel_a_queued_distillation(settings, scored):
    budget = hp.budget_of("keep fraction", 0.5, 1.0, "uniform", "params", 0, 0, 0, 0, 0, 0)
    session, _ = hp.start_prune_distill(scored, budget, "mope", DEVICE, 3, 8, "shapes", "c", settings)
    assert "Cancel requested" in hj.cancel(session["pd_job"], settings)
    assert run_queued(settings) == [] and "was cancelled" in hj.job_state(session["pd_job"], settings)[0]
    with pytest.raises(mope.MopeError, match="before it started"):
        hj.resume(session["pd_job"], settings)
    with pytest.raises(mope.MopeError, match="no job to cancel"):
        hj.cancel(None, settings)


def test_iterative_prune_and_distill_re_scores_on_the_scores_calibration_data(settings, scored):
    budget = hp.budget_of("keep fraction", 0.5, 1.0, "uniform", "params", 0, 0, 0, 0, 0, 0)
    session, _ = hp.start_prune_distill(scored, budget, "mope", DEVICE, 2, 8, "shapes", "it", settings,
                                        iterative=2, step_schedule="geometric")
    params = settings.store().get(session["pd_job"])["params"]
    assert (params["iterative"], params["step_schedule"]) == (2, "geometric")
    assert (params["data"], params["task"], params["n"]) == ("shapes:seed=2000", "zeroshot", 16)
    [job] = run_queued(settings)
    assert job["status"] == "done", job["error"]
    saved = json.loads((Path(job["result"]["pruned"]) / "pruning.json").read_text())
    assert saved["iterative"]["steps"] == 2 and saved["iterative"]["step_schedule"] == "geometric"
    bad = [({**scored, "score_settings": {**scored["score_settings"], "spec": None}}, 2, "compute the scores again"),
           ({**scored, "score_settings": {**scored["score_settings"], "spec": "folder:/etc"}}, 2, "outside"),
           (scored, 0, "steps must be a whole number")]
    for session, steps, message in bad:
        with pytest.raises(mope.MopeError, match=message):
            hp.start_prune_distill(session, budget, "mope", DEVICE, 2, 8, "shapes", "x", settings, iterative=steps)


def test_the_plan_view_measures_its_stability(settings, scored):
    budget = hp.budget_of("keep fraction", 0.5, 1.0, "uniform", "params", 0, 0, 0, 0, 0, 0)
    line = hp.stability_text(scored, budget, "mope", settings)
    assert "bootstrap resamples of the 16 calibration images" in line and "stay removed" in line
    assert "measured for MoPE plans" in hp.stability_text(scored, budget, "magnitude", settings)


def test_a_study_with_the_iterative_curve(settings, scored):
    session, message = hc.start_study(scored, settings, iterative=True)
    assert "iterative ×4" in message
    [job] = run_queued(settings)
    assert job["status"] == "done", job["error"]
    study, _metric, _line = hc.study_table(session, settings)
    assert "MoPE iterative ×4" in set(study.ranking)


def test_study_of_these_scores(settings, scored):
    session, _ = hc.start_study(scored, settings)
    [job] = run_queued(settings)
    assert job["status"] == "done", job["error"]
    study, metric, _line = hc.study_table(session, settings)
    assert set(study.ranking) == {"MoPE", "magnitude", "random"} and sorted(set(study.removed)) == [0, .25, .5, .75]
    assert figures.compression(study, metric).layout.height == 340


def test_uploaded_zip_becomes_a_calibration_folder(settings, tmp_path):
    good = tmp_path / "animals.zip"
    with zipfile.ZipFile(good, "w") as z:
        for cls in ("cat", "dog"):
            for i in range(2):
                path = tmp_path / f"{cls}{i}.png"
                Image.new("RGB", (8, 8), (i * 90, 0, 0)).save(path)
                z.write(path, f"animals/{cls}/{i}.png")
    spec, kind = hs.calibration_spec("uploaded zip of an image folder", str(good), None, settings)
    assert kind == "zeroshot" and mope.load_task(spec).classnames == ["cat", "dog"]
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../../evil.png", b"x")
    with pytest.raises(mope.MopeError, match="unsafe path"):
        unpack_zip(evil, settings)
    (tmp_path / "notzip.zip").write_text("hello")
    with pytest.raises(mope.MopeError, match="not a readable .zip"):
        unpack_zip(tmp_path / "notzip.zip", settings)
    with pytest.raises(mope.MopeError, match="outside the data folder"):
        hs.calibration_spec("server folder", None, "/etc", settings)


def test_predictions_and_bad_uploads(settings, tiny_dir, tmp_path):
    paths, labels = hc.sample_images(settings)
    got = hc.predictions(["demo", str(tiny_dir)], paths, labels, 2, settings)
    table = got.table
    assert list(table.columns) == ["image", "demo", "tiny0/tiny-clip", "note"] and len(table) == len(paths)
    assert all(cell.count("%") == 2 for cell in table["demo"])
    assert got.probs["demo"].shape == (len(paths), len(got.labels)) and np.allclose(got.probs["demo"].sum(1), 1)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(mope.MopeError, match="notes.txt is not an image"):
        hc.predictions(["demo"], [str(tmp_path / "notes.txt")], "cat", 1, settings)
    (tmp_path / "fake.png").write_text("a text file named like an image")
    mixed = hc.predictions(["demo"], [paths[0], str(tmp_path / "fake.png"), paths[1]], labels, 1, settings)
    assert mixed.table.demo[0] and mixed.table.demo[2] and mixed.table.demo[1] == ""  # the valid ones still predicted
    assert "fake.png is not an image" in mixed.table.note[1] and mixed.errors == {1: mixed.table.note[1]}
    assert len(mixed.long_table()) == 2 * len(mixed.labels) and "fake.png" not in set(mixed.long_table().image)
    Image.new("1", (8000, 6000)).save(tmp_path / "huge.png")
    with pytest.raises(mope.MopeError, match="megapixel limit"):
        hc.predictions(["demo"], [str(tmp_path / "huge.png")], "cat", 1, settings)
    with pytest.raises(mope.MopeError, match="at least one label"):
        hc.predictions(["demo"], paths, " , ,", 1, settings)


def test_sample_images_are_added_to_uploads_not_replacing_them(settings, tmp_path):
    Image.new("RGB", (32, 32), "red").save(tmp_path / "mine.png")
    images, labels, message = hc.add_samples([str(tmp_path / "mine.png")], "my label", settings)
    assert images[0] == str(tmp_path / "mine.png") and len(images) == 7 and labels.startswith("my label, ")
    assert "after your 1 image" in message
    again, _, _ = hc.add_samples(images, labels, settings)
    assert again == images  # pressing it twice adds nothing twice
    copies = tmp_path / "gradio-cache"  # what the page sends back: the File component's copies, same names
    copies.mkdir()
    for path in images[1:]:
        (copies / Path(path).name).write_bytes(Path(path).read_bytes())
    shown = [images[0], *(str(copies / Path(p).name) for p in images[1:])]
    again, _, message = hc.add_samples(shown, labels, settings)
    assert again == [images[0], *images[1:]] and "after your 1 image" in message


def test_a_drawing_is_predicted_by_each_model(settings, tiny_dir):
    canvas = np.zeros((64, 64, 4), dtype=np.uint8)
    assert hc.sketch_image({"composite": canvas}) is None  # nothing drawn yet
    canvas[20:40, 20:40] = (255, 0, 0, 255)
    image = hc.sketch_image({"composite": canvas})
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((30, 30)) == (255, 0, 0)
    got = hc.sketch_predictions(["demo", str(tiny_dir)], {"composite": canvas}, "red square, blue circle", settings)
    assert set(got.probs) == {"demo", "tiny0/tiny-clip"} and got.probs["demo"].shape == (1, 2)
    assert got.probs["demo"][0, 0] > got.probs["demo"][0, 1]  # the demo CLIP sees a red square


def test_compare_times_the_models_back_to_back(settings, tiny_dir, monkeypatch):
    calls = []

    def fake(clips, tower, batch, repeats):
        calls.append((list(clips), tower, batch))
        df = pd.DataFrame({"model": list(clips), "median (ms)": [1.5 + i for i in range(len(clips))]})
        df.attrs["device"] = "cpu (test CPU, 2 threads)"
        return df

    monkeypatch.setattr(hc, "interleaved_latency", fake)
    compared = hc.compare(["demo", str(tiny_dir)], next(iter(EVALUATION)), 10, settings)
    assert calls == [(["demo", "tiny0/tiny-clip"], "vision", 1), (["demo", "tiny0/tiny-clip"], "text", 1)]
    assert list(compared.table["image latency (ms)"]) == [1.5, 2.5]
    assert "cpu (test CPU, 2 threads)" in compared.latency_note and "back to" in compared.latency_note


def test_attention_of_a_head_beside_the_pruned_model(settings, tiny_dir):
    from app.handlers import attention as ha
    from mope.surgery import prune_units
    from mope.units import Unit

    clip = mope.load_model(str(tiny_dir), device="cpu")
    folder = mope.save_pruned(prune_units(clip, [Unit("vision", "head", 0, 1)], {"vision": 16, "text": 16}),
                              settings.saved_dir / "p")
    paths, _ = hc.sample_images(settings)
    maps, image = ha.head_maps(str(tiny_dir), str(folder), "vision.L0.head2", paths[0], None, settings)
    assert list(maps) == ["tiny0/tiny-clip", "models/p"] and image.shape == (160, 160, 3)
    assert np.allclose(maps["tiny0/tiny-clip"].weights, maps["models/p"].weights, atol=1e-6)  # source index 2 kept
    gone, _ = ha.head_maps(str(tiny_dir), str(folder), "vision.L0.head1", paths[0], None, settings)
    assert gone["models/p"].removed == "head removed" and gone["tiny0/tiny-clip"].weights is not None
    table = ha.attention_table(gone)
    assert set(table.model) == {"tiny0/tiny-clip", "models/p"} and table.weight.notna().sum() == 16
    text, none = ha.head_maps(str(tiny_dir), None, "text.L1.head0", None, "a red star", settings)
    assert none is None and text["tiny0/tiny-clip"].tokens[1:3] == ["a", "red"]
    assert figures.attention_maps(text).data[0].type == "bar"
    with pytest.raises(mope.MopeError, match="not a head"):
        ha.parse_head("vision.L0")
    with pytest.raises(mope.MopeError, match="choose an image"):
        ha.head_maps(str(tiny_dir), None, "vision.L0.head0", None, None, settings)
    with pytest.raises(mope.MopeError, match="outside"):
        ha.head_maps(str(tiny_dir), None, "vision.L0.head0", str(tiny_dir / "open_clip_config.json"), None, settings)


def test_served_page_answers_a_client(tmp_path, monkeypatch):
    """load demo → scores (a real worker process) → plan → compare, through the HTTP API."""
    import time

    from gradio_client import Client

    from app.ui import build

    monkeypatch.setenv("MOPE_HOME", str(tmp_path / "home"))
    settings = AppState()
    demo = build(settings)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        assert demo.local_url.startswith("http://127.0.0.1:")
        client = Client(demo.local_url, verbose=False)
        session, headline, card = client.predict("", "demo", api_name="/load_model")  # no id yet: a new session
        assert "demo" in headline and card["data"][0][0] == "vision"
        assert len(session) == 43 and settings.sessions.open(session)[0] == session  # the browser holds only an id
        assert client.predict(session, next(iter(CALIBRATION)), None, "", "", 16, ["vision"],
                              api_name="/start_scores") == session
        assert settings.sessions.open(session)[1]["score_job"]
        deadline = time.time() + 240
        while not settings.sessions.open(session)[1]["scores"] and time.time() < deadline:
            time.sleep(1)
            _, status, *_ = client.predict(session, "mope", "magnitude", api_name="/draw_scores")
        assert settings.sessions.open(session)[1]["scores"], status
        table, _notes, _figure = client.predict(session, "mope", "keep fraction", 0.5, 1.0, "uniform", "params", 0, 0,
                                              0, 0, 0, 0, api_name="/draw_plan")
        vision = dict(zip(table["headers"], table["data"][0]))
        assert vision["tower"] == "vision" and vision["params after"] < vision["params before"]
        comparison, latency, _plot, _per_class, _csv = client.predict(["demo"], next(iter(EVALUATION)), 50,
                                                                      api_name="/compare")
        assert comparison["headers"][:2] == ["model", "params (M)"] and comparison["data"][0][0] == "demo"
        assert "back to back" in latency and "measured just now on **cpu (" in latency
        _, headline, _ = client.predict(session, "/etc", api_name="/load_model")
        assert "Could not load" in headline and "outside the model folder" in headline and "demo" in headline
    finally:
        demo.close()
        for pid in settings.store().live_workers():
            os.kill(pid, 15)


def test_a_restarted_app_finds_the_session_and_its_jobs(settings, scored):
    budget = hp.budget_of("keep fraction", 0.5, 1.0, "uniform", "params", 0, 0, 0, 0, 0, 0)
    session_id, before = settings.sessions.open(None)
    session, _ = hp.start_prune_distill({**before, **scored}, budget, "mope", DEVICE, 2, 8, "shapes", "r", settings)
    settings.sessions.save(session_id, session, before)
    # a new app process: new state (empty caches, stores opened anew), the same home
    fresh = AppState(model_dirs=settings.model_dirs, data_dirs=settings.data_dirs, upload_dirs=settings.upload_dirs,
                     start_worker=False)
    same_id, restored = fresh.sessions.open(session_id)
    assert same_id == session_id and restored == session
    _, df, _, line = hs.scores_state(restored, fresh)
    assert df is not None and "units scored" in line
    assert "queued" in hj.job_state(restored["pd_job"], fresh)[0]
    [job] = run_queued(fresh)
    assert job["id"] == session["pd_job"] and job["status"] == "done"


def test_the_page_lists_every_registered_importance_criterion():
    from app.choices import BASELINES, CRITERIA
    from mope import importance, scoring  # noqa: F401  (scoring registers MoPE itself)

    assert CRITERIA == importance.names() and BASELINES == importance.baselines()


def test_the_page_offers_the_library_s_step_schedules():
    from app.choices import STEP_SCHEDULES
    from mope.pipeline import STEP_SCHEDULES as LIBRARY

    assert STEP_SCHEDULES == LIBRARY


def test_a_model_asked_for_by_two_requests_at_once_loads_once(settings, tiny_dir, monkeypatch):
    import threading
    import time

    loads = []
    real = mope.load_model

    def slow_load(spec, device=None):
        loads.append(spec)
        time.sleep(0.5)  # both requests arrive while the first is still loading
        return real(spec, device=device)

    monkeypatch.setattr(mope, "load_model", slow_load)
    got = []
    threads = [threading.Thread(target=lambda: got.append(hm.get_model(str(tiny_dir), settings))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == [str(tiny_dir)] and got[0] is got[1]
    for i in range(settings.models.size + 1):  # the cache is bounded: the oldest model goes first
        settings.models.get(f"spec-{i}", object)
    assert len(settings.models) == settings.models.size and hm.get_model(str(tiny_dir), settings) is not got[0]


def test_long_sweeps_start_as_anytime_and_their_estimates_show(settings, tiny_dir, monkeypatch):
    session = {**NEW_SESSION, "spec": str(tiny_dir)}
    source = next(iter(CALIBRATION))
    monkeypatch.setattr(hs, "projected_seconds", lambda *a: 3600.0)  # as a ViT-B on a laptop CPU would project
    session, message = hs.start_scores(session, source, None, None, "", 16, ["vision"], settings)
    params = settings.store().get(session["score_job"])["params"]
    assert "about 60 min here" in message and params["schedule"] == "anytime"
    assert params["first_table_seconds"] == hs.FIRST_TABLE_S and "within about 5 min" in message
    clip = hm.get_model(session["spec"], settings)
    rows = [{"unit": "vision.L0.head0", "mope": 0.1, "estimate": True, "images_used": 8, "se": 0.02, "round": 1}]
    frame = hs.partial_scores(clip, ["vision"], ["head", "neurons", "layer"], rows, settings)
    assert frame.set_index("unit").loc["vision.L0.head0", "images_used"] == 8
    assert "hatched = estimate (round 1, 8 images per unit)" in figures.heatmaps(frame).layout.title.text
    monkeypatch.setattr(hs, "projected_seconds", lambda *a: 10.0)
    session, message = hs.start_scores({**NEW_SESSION, "spec": str(tiny_dir)}, source, None, None, "", 17, ["vision"],
                                       settings)
    params = settings.store().get(session["score_job"])["params"]
    assert "min here" not in message and params["schedule"] == "exact" and params["first_table_seconds"] is None


def test_a_stopped_anytime_job_leaves_its_last_rounds_table_to_plan_from(settings, tiny_dir, monkeypatch):
    from mope.jobs import JobContext
    from mope.runners import latest_round_scores

    monkeypatch.setattr(hs, "projected_seconds", lambda *a: 3600.0)  # starts as anytime
    session = {**NEW_SESSION, "spec": str(tiny_dir)}
    session, _ = hs.start_scores(session, next(iter(CALIBRATION)), None, None, "", 64, ["vision"], settings)
    job = session["score_job"]
    seen = []

    def should_stop(self):  # the page, while the job runs; the user presses Cancel once round 1's table is there
        if latest_round_scores(self.job_id) is None:
            return False
        seen.append(hs.scores_state(session, settings))
        return True

    monkeypatch.setattr(JobContext, "should_stop", should_stop)
    [ended] = run_queued(settings)
    running, frame, total, _ = seen[0]  # while it ran: the heatmaps' rows, and round 1's table to plan from
    assert running["score_job"] == job and running["scores"] == str(latest_round_scores(job)) and total == len(frame)
    assert ended["status"] == "cancelled" and latest_round_scores(job).name == f"scores-{job}-round1.csv"
    session, df, _, line = hs.scores_state(session, settings)
    assert session["scores"] == str(latest_round_scores(job)) and session["score_job"] is None
    assert "cancelled" in line and "The table of its last round is kept" in line and "round 1" in line
    assert df["estimate"].all() and df.attrs["group_sizes"]
    plan_, _, notes = hp.preview(df, mope.Budget(keep=0.5, towers=("vision",)), "mope")
    assert plan_.removed and "round 1 of anytime scoring" in notes
    assert latest_round_scores("../" + job) is None  # a forged id never reaches the file pattern


def test_a_cancelled_exact_score_job_says_its_finished_layers_are_kept_and_they_are(settings, tiny_dir, monkeypatch):
    from mope.jobs import JobContext

    monkeypatch.setattr(hs, "projected_seconds", lambda *a: 10.0)  # starts as exact
    def start() -> dict:
        return hs.start_scores({**NEW_SESSION, "spec": str(tiny_dir)}, next(iter(CALIBRATION)), None, None, "", 24,
                               ["vision"], settings)[0]

    scored = []
    real = mope.scoring.FastScorer.score_chunk
    def counting(self, chunk):  # the units of each finished layer
        rows = real(self, chunk)
        scored.extend(u.name for u in chunk)
        return rows

    monkeypatch.setattr(mope.scoring.FastScorer, "score_chunk", counting)
    monkeypatch.setattr(JobContext, "should_stop", lambda self: bool(scored))  # after layer 0
    session = start()
    [ended] = run_queued(settings)
    _, _, _, line = hs.scores_state(session, settings)
    assert ended["status"] == "cancelled" and "was cancelled. Any layers it finished are cached" in line
    before = set(scored)
    scored.clear()
    monkeypatch.setattr(JobContext, "should_stop", lambda self: False)
    session = start()
    [done] = run_queued(settings)
    session, df, _, _ = hs.scores_state(session, settings)
    assert done["status"] == "done" and before and before.isdisjoint(scored) and set(df.unit) == before | set(scored)
