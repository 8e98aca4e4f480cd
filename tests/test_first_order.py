import copy
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

import mope
from mope.data.tasks import image_batches
from mope.evaluation import task_text_embeddings
from mope.first_order import gated, loss_increases
from mope.units import BlockView, Unit, tower_blocks

GROUP = 32  # the tiny model's 128 FFN neurons per layer: 4 groups


@pytest.fixture(scope="module")
def setup(tiny_dir):
    """The tiny model in float64 (finite differences need the precision), its task's images, labels and classifier."""
    clip = mope.load_model(str(tiny_dir), device="cpu")
    task = mope.load_task("shapes", n=12)
    classifier = task_text_embeddings(clip, task).double()
    model = copy.deepcopy(clip.model).double()
    images = torch.cat(list(image_batches(task, clip.preprocess, 64))).double()
    return model, images, task.labels, classifier


def _losses(model, images, labels, classifier):
    emb = model.encode_image(images, normalize=True)
    return F.cross_entropy(model.logit_scale.exp() * emb @ classifier.T, labels, reduction="none")


def _first_order(setup, units, sizes):
    """loss_increases over chunks of these sizes, each padded by two copies of its last image."""
    model, images, labels, classifier = setup
    chunks, start = [], 0
    for size in sizes:
        x, y = images[start:start + size], labels[start:start + size]
        padded = torch.cat([x, x[-1:].expand(2, *x.shape[1:])])
        chunks.append((len(padded), lambda x=padded, y=y: _losses(model, x, torch.cat([y, y[-1:].expand(2)]), classifier)[:len(y)]))
        start += size
    return loss_increases(model, "vision", units, GROUP, chunks)


@contextmanager
def _scaled(model, unit: Unit, factor: float):
    """The unit's contribution times `factor` (its gates at `factor`): the columns it reaches the residual
    stream through, or for a layer its output's change to the hidden state."""
    block = tower_blocks(model, "vision")[unit.layer]
    if unit.kind == "layer":
        hook = block.register_forward_hook(lambda m, args, out: args[0] + factor * (out - args[0]))
        try:
            yield
        finally:
            hook.remove()
        return
    view = BlockView(block)
    weight, cols = ((block.attn.out_proj.weight, view.head_columns(unit.index)) if unit.kind == "head"
                    else (block.mlp.c_proj.weight, view.neuron_slice(unit.index, GROUP)))
    saved = weight[:, cols].clone()
    with torch.no_grad():
        weight[:, cols] *= factor
    try:
        yield
    finally:
        with torch.no_grad():
            weight[:, cols] = saved


UNITS = [Unit("vision", "head", 0, 1), Unit("vision", "head", 1, 3), Unit("vision", "neurons", 0, 2),
         Unit("vision", "neurons", 1, 0), Unit("vision", "layer", 0, 0), Unit("vision", "layer", 1, 0)]


def test_each_units_first_order_increase_is_minus_the_derivative_of_each_images_loss_in_its_gate(setup):
    """Central differences in float64 of every image's loss in the unit's gate (its weights scaled, a layer's
    output change scaled) agree with the backward pass's per-image estimate, for heads, neuron groups and layers."""
    model, images, labels, classifier = setup
    found = _first_order(setup, UNITS, [12])
    eps = 1e-4
    for unit, row in zip(UNITS, found):
        with torch.no_grad():
            with _scaled(model, unit, 1 - eps):
                low = _losses(model, images, labels, classifier)
            with _scaled(model, unit, 1 + eps):
                high = _losses(model, images, labels, classifier)
        expected = (low - high) / (2 * eps)  # loss(1 − ε) − loss(1 + ε) over 2ε: −∂loss/∂gate
        assert expected.abs().max() > 1e-6, unit  # the unit moves the loss: the comparison means something
        assert torch.allclose(row.double(), expected, rtol=1e-4, atol=1e-7), (unit, row, expected)


def test_an_images_estimate_does_not_depend_on_its_chunk_or_padding(setup):
    """One gate per sample: chunks of 5 + 7 (each padded) give each image the estimate one chunk of 12 gives it."""
    one, two = _first_order(setup, UNITS, [12]), _first_order(setup, UNITS, [5, 7])
    assert one.shape == (len(UNITS), 12) and torch.allclose(one, two, rtol=1e-5, atol=1e-8)


def test_the_gates_leave_the_model_as_it_was(setup):
    model, images, labels, classifier = setup
    blocks = list(tower_blocks(model, "vision"))
    with torch.no_grad():
        before = _losses(model, images, labels, classifier)
        with gated(model, "vision", len(images), images.device) as gates:
            inside = _losses(model, images, labels, classifier)  # gates at 1: the same losses
            assert len(gates) == len(blocks) and gates[0]["head"].shape == (12, 4)
    assert list(tower_blocks(model, "vision")) == blocks
    assert torch.allclose(inside, before, atol=1e-12)


def test_a_stop_between_chunks_stops_the_pass(setup):
    calls = []

    def stop():
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt

    model, images, labels, classifier = setup
    chunk = (12, lambda: _losses(model, images, labels, classifier))
    with pytest.raises(KeyboardInterrupt):
        loss_increases(model, "vision", UNITS, GROUP, [chunk, chunk, chunk], stop)
    assert len(calls) == 2
