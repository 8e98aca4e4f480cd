import pytest
import torch

from mope.data import shapes
from mope.errors import MopeError


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


def test_grid_is_the_default_and_free_differs():
    grid, default, free = (shapes.sample(32, seed=9, placement="grid"), shapes.sample(32, seed=9),
                           shapes.sample(32, seed=9, placement="free"))
    assert torch.equal(grid.images, default.images) and not torch.equal(grid.images, free.images)
    again = shapes.sample(32, seed=9, placement="free")
    assert torch.equal(free.images, again.images) and free.captions == again.captions
    assert all(torch.equal(free.labels[k], again.labels[k]) for k in shapes.ATTRIBUTES)


def test_every_mask_lies_within_its_extent():
    side = torch.linspace(-2, 2, 801)
    u, v = side.view(1, -1).expand(801, 801), side.view(-1, 1).expand(801, 801)
    r = torch.sqrt(u * u + v * v)
    for name, mask in zip(shapes.SHAPES, shapes._MASKS):
        inside = mask(u, v)
        assert inside.any() and r[inside].max() <= shapes._EXTENT, name


def test_free_shapes_are_whole_anywhere_any_size_and_slightly_rotated():
    n, s = 2000, shapes.IMAGE_SIZE
    labels = {a: torch.zeros(n, dtype=torch.long) for a in shapes.ATTRIBUTES}
    g = shapes.free_geometry(labels, torch.Generator().manual_seed(0), s)
    reach = shapes._EXTENT * g.radius
    assert ((g.centre - reach.unsqueeze(1)) >= 0).all() and ((g.centre + reach.unsqueeze(1)) <= s).all()
    low, high = shapes.FREE_RADIUS
    assert g.radius.min() >= low * s and g.radius.max() <= high * s and g.radius.std() > 0.05 * s
    assert g.centre.min() < 0.3 * s and g.centre.max() > 0.7 * s  # positions span the frame
    assert g.angle.abs().max() <= shapes.FREE_ROTATION * torch.pi / 180 and g.angle.std() > 0.1
    nearest_size = (g.radius.unsqueeze(1) / s - torch.tensor(list(shapes.SIZES.values()))).abs().argmin(1)
    assert torch.equal(labels["size"], nearest_size) and len(labels["position"].unique()) == len(shapes.POSITIONS)


def test_free_shapes_are_drawn_whole_in_their_colour():
    batch = shapes.sample(64, seed=5, placement="free")
    for i in range(64):
        img = batch.images[i].float()
        bg = torch.tensor(shapes.BACKGROUNDS[batch.names("background")[i]], dtype=torch.float32)
        fg = torch.tensor(shapes.COLOURS[batch.names("colour")[i]], dtype=torch.float32)
        border = torch.cat([img[0], img[-1], img[:, 0], img[:, -1]])
        assert ((border - fg).norm(dim=-1) > (border - bg).norm(dim=-1)).all()  # nothing of the shape on the edge
        assert ((img - fg).abs().max(-1).values < 45).float().mean() > 0.01


def test_captions_of_free_shapes_name_what_is_drawn():
    batch = shapes.sample(100, seed=6, placement="free", captions_per_image=2)
    for i, caps in enumerate(batch.captions):
        named = shapes.named_labels(caps)
        for a in shapes.ATTRIBUTES:
            assert all(x in (-100, int(batch.labels[a][i])) for x in named[a].tolist()), (a, caps)


def test_unknown_placement_is_a_clear_error():
    with pytest.raises(MopeError, match="grid, free"):
        shapes.sample(4, placement="anywhere")


def test_stream_mixes_grid_batches_in_by_step():
    free = shapes.stream_batch(8, seed=0, step=3, placement="free")
    assert torch.equal(shapes.stream_batch(8, seed=0, step=3, placement="free", grid_every=4).images,
                       shapes.stream_batch(8, seed=0, step=3, placement="grid").images)
    assert torch.equal(shapes.stream_batch(8, seed=0, step=3, placement="free", grid_every=5).images, free.images)
    step, batch = next(shapes.stream(8, seed=0, start=3, placement="free"))
    assert step == 3 and torch.equal(batch.images, free.images)
