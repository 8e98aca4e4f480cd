import pytest

import mope
from mope.card import model_card, source_sizes, tower_sizes
from mope.planning import Budget, plan
from mope.scoring import unit_table
from mope.surgery import prune_units
from mope.units import Unit, tower_summary


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return mope.load_model(str(tiny_dir), device="cpu")


def _row(card: str, tower: str) -> list[str]:
    line = next(line for line in card.splitlines() if line.startswith(f"| {tower} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_source_sizes_are_those_of_the_unpruned_model(tiny):
    pruned = prune_units(tiny, [Unit("vision", "layer", 0), Unit("text", "head", 1, 0)], {"vision": 64, "text": 64})
    before, after, source = source_sizes(pruned), tower_sizes(pruned), tower_sizes(tiny)
    for tower in ("vision", "text"):
        assert before[tower] == source[tower]
        assert after[tower]["params"] == tower_summary(pruned.model, tower)["params"] < source[tower]["params"]
        assert after[tower]["gflops"] < source[tower]["gflops"]


def test_card_of_a_head_pruned_distilled_model(tiny):
    removed = [Unit("vision", "head", 0, 1), Unit("vision", "head", 0, 2), Unit("vision", "layer", 1)]
    pruned = mope.prune(tiny, plan(unit_table(tiny), Budget(heads=1, towers=("vision",)), by="magnitude"))
    pruned = prune_units(pruned, removed[2:], {"vision": 64, "text": 64})
    pruned.info["distill"] = {"config": {"steps": 20, "lr": 0.0005, "hidden": 0.1}, "data": "shapes",
                              "teacher": "demo", "steps_done": 20,
                              "history": [{"step": 10, "acc1": 0.25}, {"step": 20, "acc1": 0.5}]}
    card = model_card(pruned, "my-pruned-clip", stock=False)
    assert card.startswith("---\nlibrary_name: open_clip\n")
    vision = _row(card, "vision")
    source = tower_sizes(tiny)["vision"]
    assert vision[1] == "2 → 1" and vision[2] == "3 (all)"  # 1 of 4 heads gone from every layer, then a layer
    assert vision[4] == f"{source['params'] / 1e6:.2f}M → {tower_summary(pruned.model, 'vision')['params'] / 1e6:.2f}M"
    assert "| 1 | magnitude | uniform | vision | 2 | 0 | 0 |" in card  # step 1: one head from each of 2 layers
    assert "| 20 | 0.5000 |" in card and "acc1 0.5000." in card  # eval history and the last measurement
    assert "Distilled from `demo` on `shapes` for 20 steps" in card and "hidden 0.1" in card
    assert 'mope.load_model("my-pruned-clip")' in card and "local-dir:" not in card
    assert "Heads were removed" in card


def test_card_of_a_stock_model_shows_plain_open_clip_loading(tiny):
    pruned = prune_units(tiny, [Unit("vision", "layer", 1)], {"vision": 64, "text": 64})
    card = model_card(pruned, "shallow", stock=True)
    assert 'open_clip.create_model_and_transforms("local-dir:shallow")' in card
    assert "Not distilled; no metrics were measured" in card and "--model shallow" in card
    assert _row(card, "text")[1] == "2"  # unchanged: no arrow


def test_a_model_whose_sizes_cannot_be_measured_still_gets_a_card(tiny, monkeypatch):
    import mope.card

    pruned = prune_units(tiny, [Unit("vision", "layer", 1)], {"vision": 64, "text": 64})
    monkeypatch.setattr(mope.card, "tower_sizes", lambda clip: 1 / 0)
    card = model_card(pruned, "odd", stock=True)
    assert "The sizes could not be measured (ZeroDivisionError" in card and "## How to load" in card
