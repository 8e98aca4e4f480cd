"""The app's figures from synthetic tables: what each shows, and that it keeps its shape while data is missing."""
import numpy as np
import pandas as pd
import pytest
import torch

from app import figures
from mope.attention import HeadAttention


def scores(vision_scale=1.0, text_scale=0.01, layers=True) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for tower, n_layers, heads, groups in (("vision", 3, 4, 6), ("text", 2, 2, 4)):
        for layer in range(n_layers):
            for kind, count in (("head", heads), ("neurons", groups)):
                rows += [{"tower": tower, "kind": kind, "layer": layer, "index": i,
                          "unit": f"{tower}.L{layer}.{kind}{i}"} for i in range(count)]
            if layers:
                rows.append({"tower": tower, "kind": "layer", "layer": layer, "index": 0, "unit": f"{tower}.L{layer}"})
    df = pd.DataFrame(rows)
    scale = np.where(df.tower == "vision", vision_scale, text_scale)
    df["mope"] = rng.random(len(df)) * scale
    df["magnitude"] = rng.random(len(df)) * np.where(df.kind == "layer", 1000.0, 1.0)
    return df


def heatmap_traces(fig):
    return [t for t in fig.data if t.type == "heatmap"]


def test_each_tower_has_its_own_colour_scale():
    df = scores()
    fig = figures.heatmaps(df)
    vision, _, text, _ = heatmap_traces(fig)
    assert vision.zmax == pytest.approx(df[(df.tower == "vision") & (df.kind != "layer")].mope.max())
    assert text.zmax == pytest.approx(df[(df.tower == "text") & (df.kind != "layer")].mope.max())
    assert text.zmax < 0.02 < vision.zmax  # the text panel is no longer flat under the vision tower's scale
    bars = [t for t in heatmap_traces(fig) if t.showscale]
    assert len(bars) == 2 and bars[0].colorbar.y > bars[1].colorbar.y


def test_a_queued_heatmap_has_sensible_axes():
    df = scores().assign(mope=np.nan)
    df.attrs["scored"] = 0
    fig = figures.heatmaps(df)
    assert all(np.isnan(np.asarray(t.z, dtype=float)).all() for t in heatmap_traces(fig))
    assert tuple(fig.layout.yaxis.range) == (2.5, -0.5) and tuple(fig.layout.xaxis.range) == (-0.5, 3.5)
    assert tuple(fig.layout.xaxis2.range) == (-0.5, 5.5) and tuple(fig.layout.yaxis3.range) == (1.5, -0.5)


def test_removed_layers_are_shaded_and_labelled():
    fig = figures.heatmaps(scores(), removed={"vision.L1", "vision.L0.head2", "vision.L1.head0"})
    shaded = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(shaded) == 2 and {(s.y0, s.y1) for s in shaded} == {(0.5, 1.5)}
    assert any(a.text == "L1 removed" for a in fig.layout.annotations)
    crosses = [t for t in fig.data if t.type == "scatter"]
    assert [(list(t.x), list(t.y)) for t in crosses] == [([2], [0])]  # a head inside a removed layer is not crossed


def test_layers_get_their_own_axes_and_rho_in_the_scatter():
    df = scores()
    rho = pd.DataFrame([{"tower": "vision", "kind": "layer", "magnitude": 0.5},
                        {"tower": "vision", "kind": "head", "magnitude": -0.25}])
    fig = figures.versus(df, "magnitude", rho)
    by_name = {t.name: t for t in fig.data}
    assert by_name["vision layer (ρ = 0.50)"].xaxis == "x2" and by_name["vision head (ρ = -0.25)"].xaxis == "x"
    assert max(by_name["vision head (ρ = -0.25)"].x) <= 1.0


def test_distillation_plot_has_step_zero_and_reference_lines():
    curve = [{"step": s, "loss": 1.0 / s, "affinity": 0.5 / s} for s in range(1, 11)]
    history = [{"step": 0, "acc1": 0.4}, {"step": 10, "acc1": 0.8}]
    refs = {"teacher": {"acc1": 0.9, "acc5": 1.0}, "pruned": {"acc1": 0.4}}
    fig = figures.losses(curve, history, refs, steps=20)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["acc1"].x) == [0, 10]
    teacher = by_name["acc1: teacher"]
    assert list(teacher.y) == [0.9, 0.9] and list(teacher.x) == [0, 20]
    assert list(by_name["acc1: pruned, before distillation"].y) == [0.4, 0.4]
    assert figures.losses([], history[:1], refs).data  # before the first step: the step-0 eval and the references


def test_probability_bars_show_every_label_and_failed_images():
    probs = {"demo": np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]), "pruned": np.array([[0.5, 0.3, 0.2], [0, 0, 0]])}
    fig = figures.probability_bars(["a.png", "fake.png"], ["red", "blue", "green"], probs, errors={1: "not an image"})
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 2 and list(bars[0].y) == ["red", "blue", "green"] and list(bars[0].x) == [0.7, 0.2, 0.1]
    [note] = [a for a in fig.layout.annotations if "not predicted: not an image" in a.text]
    low, high = fig.get_subplot(2, 1).yaxis.domain  # in the failed image's own panel
    assert note.yref == "paper" and low < note.y < high
    assert fig.layout.height > 0


def test_attention_maps_side_by_side_with_a_removed_head():
    grid = torch.full((2, 3), 1 / 7)
    maps = {"demo": HeadAttention("vision", 1, 2, grid, self_weight=1 / 7),
            "pruned": HeadAttention("vision", 1, 2, None, removed="head removed")}
    fig = figures.attention_maps(maps, image=np.zeros((8, 12, 3), dtype=np.uint8))
    assert [t.type for t in fig.data] == ["image", "heatmap"]
    [note] = [a for a in fig.layout.annotations if a.text == "head removed by pruning"]
    low, high = fig.get_subplot(1, 3).xaxis.domain  # in the pruned model's panel (the third), not over the image
    assert note.xref == "paper" and low < note.x < high
    assert "vision.L1.head2" in fig.layout.title.text
    text = {"demo": HeadAttention("text", 0, 0, torch.tensor([0.5, 0.25, 0.25]), tokens=["<start>", "red", "<end>"])}
    bars = figures.attention_maps(text).data[0]
    assert bars.type == "bar" and list(bars.customdata) == ["<start>", "red", "<end>"]


def test_per_class_bars_keep_the_table_order():
    df = pd.DataFrame({"class": ["red", "green"], "images": [2, 3], "a": [1.0, 0.5], "b": [0.0, 0.5], "change": [-1, 0]})
    fig = figures.per_class(df, ["a", "b"])
    assert list(fig.data[0].x) == ["red", "green"] and list(fig.data[1].y) == [0.0, 0.5]


def test_anytime_estimates_are_hatched_and_named():
    df = scores()
    df["estimate"] = (df.tower == "vision") & (df.layer == 2)
    df["images_used"] = np.where(df["estimate"], 16, 256)
    df["se"] = np.where(df["estimate"], 0.01, 0.0)
    df["round"] = 2
    fig = figures.heatmaps(df)
    hatched = [t for t in fig.data if t.name == "estimates"]
    assert [(sorted(t.x), set(t.y)) for t in hatched] == [([0, 1, 2, 3], {2}), ([0, 1, 2, 3, 4, 5], {2})]
    assert "hatched = estimate (round 2, 16–256 images per unit)" in fig.layout.title.text
    assert "estimate from 16 images" in heatmap_traces(fig)[0].customdata[2][0]
    assert "first-order" not in heatmap_traces(fig)[0].customdata[2][0]
    filled = heatmap_traces(figures.heatmaps(df.assign(first_order=df["estimate"])))[0].customdata
    assert "the loss on the other images: first-order estimates" in filled[2][0] and "first-order" not in filled[1][0]
    final = figures.heatmaps(df.assign(estimate=False))
    assert not [t for t in final.data if t.name == "estimates"] and "estimate" not in final.layout.title.text
