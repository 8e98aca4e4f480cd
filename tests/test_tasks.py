import json

import numpy as np
import pytest
import torch
from PIL import Image

import mope
from mope.data.tasks import SHAPES_HELD_OUT_SEED


def _png(path, colour=(255, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 20, 3), colour, dtype=np.uint8)).save(path)


def test_shapes_tasks():
    t = mope.load_task("shapes", n=100)
    assert t.protocol == "zeroshot" and len(t.classnames) == 64 and len(t) == 100 and t.labels.max() < 64
    assert len(mope.load_task("shapes:target=colour", n=10).classnames) == 8
    assert mope.load_task("shapes:target=shape,seed=7", n=10).name.endswith("seed=7)")
    r = mope.load_task("shapes", protocol="retrieval", n=30)
    assert r.protocol == "retrieval" and len(r.texts) == 150 and r.text_to_image.tolist()[:6] == [0, 0, 0, 0, 0, 1]
    assert f"seed={SHAPES_HELD_OUT_SEED}" in t.name
    with pytest.raises(mope.MopeError, match="unknown shapes option"):
        mope.load_task("shapes:colour")


@pytest.mark.parametrize("spec", ["shapes", "folder:{folder}"])
def test_a_count_of_no_images_is_refused(tmp_path, spec):
    """Issue 11: n=0 meant 1,000 shapes images, and -5 one folder image."""
    _png(tmp_path / "cat" / "a.png")
    for n in (0, -5):
        with pytest.raises(mope.MopeError, match="load_task: n must be a whole number from 1"):
            mope.load_task(spec.format(folder=tmp_path), n=n)


def test_shapes_placement_option():
    grid, free = mope.load_task("shapes", n=50), mope.load_task("shapes:placement=free", n=50)
    assert "placement" not in grid.name and "placement=free" in free.name
    assert torch.equal(grid.images, mope.load_task("shapes:placement=grid", n=50).images)
    assert not torch.equal(grid.images, free.images) and grid.fingerprint() != free.fingerprint()
    shape = mope.load_task("shapes:placement=free,target=shape,seed=3", n=20)
    assert shape.classnames == list(mope.data.shapes.SHAPES) and "seed=3" in shape.name
    retrieval = mope.load_task("shapes:placement=free", protocol="retrieval", n=10)
    assert len(retrieval.texts) == 50 and "placement=free" in retrieval.name


@pytest.mark.parametrize("spec, message", [
    ("shapes:placement=anywhere", "unknown shapes placement 'anywhere'; use one of grid, free"),
    ("shapes:seed=abc", "shapes seed must be an integer, not 'abc'"),
    ("shapes:n=1.5", "shapes n must be an integer"),
    ("shapes:where=free", "placement=grid|free"),
])
def test_bad_shapes_specs_are_clear_errors(spec, message):
    with pytest.raises(mope.MopeError, match=message.replace("|", r"\|")):
        mope.load_task(spec)


def test_folder_task_skips_and_counts_corrupt_images(tmp_path):
    _png(tmp_path / "cat" / "a.png")
    _png(tmp_path / "cat" / "b.png")
    _png(tmp_path / "hot_dog" / "c.png", (0, 255, 0))
    (tmp_path / "hot_dog" / "broken.jpg").write_bytes(b"not an image")
    t = mope.load_task(f"folder:{tmp_path}")
    assert t.classnames == ["cat", "hot dog"] and t.labels.tolist() == [0, 0, 1] and t.skipped == 1


def test_empty_and_missing_folders_are_clear_errors(tmp_path):
    with pytest.raises(mope.MopeError, match="no class sub-folders"):
        mope.load_task(f"folder:{tmp_path}")
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "x.png").write_bytes(b"junk")
    with pytest.raises(mope.MopeError, match="no readable images"):
        mope.load_task(f"folder:{tmp_path}")
    with pytest.raises(mope.MopeError, match="not found"):
        mope.load_task(f"folder:{tmp_path / 'nope'}")


def test_pairs_csv_and_jsonl(tmp_path):
    _png(tmp_path / "img" / "a.png")
    _png(tmp_path / "img" / "b.png")
    (tmp_path / "pairs.csv").write_text("image,caption\nimg/a.png,a red square\nimg/b.png,another\n"
                                        "img/a.png,red again\nimg/missing.png,gone\n")
    t = mope.load_task(f"pairs:{tmp_path / 'pairs.csv'}")
    assert t.protocol == "retrieval" and len(t) == 2 and t.skipped == 1
    assert t.texts == ["a red square", "another", "red again"] and t.text_to_image.tolist() == [0, 1, 0]
    rows = [{"image": "a.png", "caption": "x"}, {"image": "b.png", "caption": "y"}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    j = mope.load_task(f"pairs:{tmp_path / 'p.jsonl'}", image_root=str(tmp_path / "img"))
    assert j.texts == ["x", "y"]


def test_pairs_without_needed_columns(tmp_path):
    (tmp_path / "bad.csv").write_text("path,text\na.png,hi\n")
    with pytest.raises(mope.MopeError, match="columns 'image' and 'caption'"):
        mope.load_task(f"pairs:{tmp_path / 'bad.csv'}")
    (tmp_path / "bad.jsonl").write_text('{"img": 1}\n')
    with pytest.raises(mope.MopeError, match="line 1"):
        mope.load_task(f"pairs:{tmp_path / 'bad.jsonl'}")


def test_cifar_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MOPE_HOME", str(tmp_path))
    with pytest.raises(mope.MopeError, match="could not be downloaded"):
        mope.load_task("cifar10")


def test_subset_keeps_captions_with_their_images():
    r = mope.load_task("shapes", protocol="retrieval", n=20).subset(5)
    assert len(r) == 5 and len(r.texts) == 25
    assert sorted(set(r.text_to_image.tolist())) == [0, 1, 2, 3, 4]
    full = mope.load_task("shapes", protocol="retrieval", n=20)
    idx = torch.randperm(20, generator=torch.Generator().manual_seed(0))[:5].sort().values
    assert torch.equal(r.images[0], full.images[idx[0]])
    assert r.texts[:5] == full.texts[5 * idx[0]: 5 * idx[0] + 5]


def test_at_keeps_the_images_at_the_positions_with_their_labels_or_captions():
    zeroshot, index = mope.load_task("shapes", n=20), torch.tensor([3, 7, 19])
    sub = zeroshot.at(index)
    assert torch.equal(sub.images, zeroshot.images[index]) and torch.equal(sub.labels, zeroshot.labels[index])
    assert sub.fingerprint() != zeroshot.fingerprint()
    retrieval = mope.load_task("shapes", protocol="retrieval", n=20)
    sub = retrieval.at(index)
    assert sub.text_to_image.tolist() == [i for i in range(3) for _ in range(5)]
    assert sub.texts == [t for t, i in zip(retrieval.texts, retrieval.text_to_image.tolist()) if i in (3, 7, 19)]


def test_unknown_data_spec():
    with pytest.raises(mope.MopeError, match="unknown data spec"):
        mope.load_task("imagenet")


def test_folder_images_over_the_pixel_limit_are_skipped_before_decoding(tmp_path, monkeypatch):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / cls / "ok.png")
    Image.new("1", (12000, 12000)).save(tmp_path / "cat" / "huge.png")  # 144 MP: PIL itself would only warn
    decoded, load = [], Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self, *a: (decoded.append(self.size), load(self, *a))[1])
    task = mope.load_task(f"folder:{tmp_path}")
    assert len(task) == 2 and task.skipped == 1 and (12000, 12000) not in decoded
