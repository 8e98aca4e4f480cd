import torch

from mope.data import shapes


def test_same_seed_same_world_and_other_seed_differs():
    a, b, c = shapes.sample(64, seed=3), shapes.sample(64, seed=3), shapes.sample(64, seed=4)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert all(torch.equal(a.labels[k], b.labels[k]) for k in shapes.ATTRIBUTES)
    assert not torch.equal(a.images, c.images)


def test_world_has_enough_attributes_and_images_are_rgb():
    assert len(shapes.COLOURS) >= 8 and len(shapes.SHAPES) >= 8
    batch = shapes.sample(16, seed=0)
    assert batch.images.shape == (16, 64, 64, 3) and batch.images.dtype == torch.uint8
    assert len(batch.captions[0]) == 5


def test_captions_name_the_image_attributes():
    batch = shapes.sample(200, seed=1, captions_per_image=3)
    for i, caps in enumerate(batch.captions):
        colour, shape = batch.names("colour")[i], batch.names("shape")[i]
        for cap in caps:
            assert colour in cap or shape in cap, cap
            assert not any(c in cap.split() for c in shapes.COLOURS if c != colour), cap
    full = shapes.sample(50, seed=2, detail="full")
    for i, caps in enumerate(full.captions):
        assert all(full.names("colour")[i] in c and full.names("shape")[i] in c for c in caps)
    assert len({c for caps in batch.captions for c in caps}) > 100


def test_shape_is_drawn_in_its_colour_on_its_background():
    batch = shapes.sample(32, seed=5)
    for i in range(32):
        img = batch.images[i].float()
        bg = torch.tensor(shapes.BACKGROUNDS[batch.names("background")[i]], dtype=torch.float32)
        fg = torch.tensor(shapes.COLOURS[batch.names("colour")[i]], dtype=torch.float32)
        corner = img[:3, :3].reshape(-1, 3).mean(0)
        assert (corner - bg).abs().max() < 30
        near_fg = ((img - fg).abs().max(-1).values < 45).float().mean()
        assert near_fg > 0.01


def test_stream_is_deterministic_and_resumable():
    s1 = shapes.stream(8, seed=0)
    first = [next(s1) for _ in range(3)]
    step, resumed = next(shapes.stream(8, seed=0, start=2))
    assert step == 2 and torch.equal(resumed.images, first[2][1].images) and resumed.captions == first[2][1].captions
    assert not torch.equal(first[0][1].images, first[1][1].images)


def test_named_labels_read_captions():
    labels = shapes.named_labels(["a small red circle in the top left corner", "a blue shape on a white background"])
    assert labels["colour"].tolist() == [0, 5] and labels["shape"].tolist() == [0, -100]
    assert labels["size"].tolist() == [0, -100] and labels["position"].tolist() == [1, -100]
    assert labels["background"].tolist() == [-100, 2]
    batch = shapes.sample(100, seed=3, captions_per_image=1)
    named = shapes.named_labels([c[0] for c in batch.captions])
    for a in shapes.ATTRIBUTES:
        seen = named[a] >= 0
        assert torch.equal(named[a][seen], batch.labels[a][seen])
