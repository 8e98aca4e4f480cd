import mope
from mope.plan import Budget
from mope.pruned import describe_provenance, folder_provenance, provenance
from mope.scoring import unit_table


def test_provenance_of_original_pruned_saved_and_distilled(tiny_dir, tmp_path):
    clip = mope.load_model(str(tiny_dir), device="cpu")
    assert provenance(clip) == "original (not pruned)" == folder_provenance(tiny_dir)
    p = mope.plan(unit_table(clip), Budget(keep=0.5, layers=1), by="magnitude")
    pruned = mope.prune(clip, p)
    kinds = [u.kind for u in p.removed]
    line = provenance(pruned)
    assert line.startswith(f"pruned from {tiny_dir}; plan by magnitude (keep 0.5, layers 1, uniform, vision): ")
    assert f"{kinds.count('head')} heads, {kinds.count('neurons')} neuron groups, 1 layers removed" in line
    assert line.endswith("not distilled")
    folder = mope.save_pruned(pruned, tmp_path / "p")
    assert folder_provenance(folder) == line == provenance(mope.load_model(str(folder), device="cpu"))
    meta = {**pruned.info, "distill": {"steps_done": 40, "config": {"steps": 500}, "teacher": "demo"}}
    assert describe_provenance(meta).endswith("; distilled 40 of 500 steps from demo")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "pruning.json").write_text("{not json")
    assert folder_provenance(tmp_path / "bad") == "unknown origin (pruning.json is unreadable)"
