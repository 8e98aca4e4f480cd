"""Surgery: physically remove heads, FFN neurons and layers so the model gets smaller and faster.

`kept_structure` turns removed units into what each tower keeps; `blocks.apply_structure` reshapes the
modules; `prune` applies a Plan to a copy of a Clip. The result computes what the ablated model computes.
"""
from __future__ import annotations

import copy
from typing import Iterable

from torch import nn

from .blocks import apply_structure, by_layer
from .cache import model_fingerprint
from .clip import Clip
from .errors import MopeError
from .units import TOWERS, Unit, tower_blocks


def kept_structure(model: nn.Module, removed: Iterable[Unit], group_sizes: dict[str, int]) -> dict:
    """Per tower: kept layers (original indices) and, per kept layer, kept head and neuron indices."""
    removed = set(removed)
    unsized = sorted({u.tower for u in removed if u.kind == "neurons" and u.tower not in group_sizes})
    if unsized:  # guessing would remove other neurons than the plan counted (a group of 1 instead of 64)
        raise MopeError(f"the plan removes {' and '.join(unsized)} neuron groups but does not say their size: plan "
                        "from the table mope.score returns, mope.load_scores reads or a stop's Cancelled.table; a table "
                        "built from progress rows needs the scores' attrs['group_sizes'], e.g. those of "
                        "mope.scoring.unit_table(clip, towers, units) with the same group size")
    out = {}
    for tower in TOWERS:
        blocks = tower_blocks(model, tower)
        layers, heads, neurons = [], {}, {}
        for i, block in enumerate(blocks):
            if Unit(tower, "layer", i) in removed:
                continue
            layers.append(i)
            heads[i] = [h for h in range(block.attn.num_heads) if Unit(tower, "head", i, h) not in removed]
            g = group_sizes.get(tower, 1)  # only heads or layers go from a tower without a size
            gone = {u.index for u in removed if u.tower == tower and u.kind == "neurons" and u.layer == i}
            neurons[i] = [n for n in range(block.mlp.c_fc.out_features) if n // g not in gone]
        out[tower] = {"layers": layers, "heads": heads, "neurons": neurons}
    return out


def compose(outer: dict | None, inner: dict) -> dict:
    """The structure of pruning `inner` after `outer`, in the indices of the original model.

    `inner` indexes the blocks (and heads, neurons) of the model `outer` produced.
    """
    if outer is None:
        return inner
    out = {}
    for tower, spec in inner.items():
        o = outer[tower]
        layers = [o["layers"][i] for i in spec["layers"]]
        out[tower] = {
            "layers": layers,
            "heads": {src: [by_layer(o["heads"], src)[h] for h in by_layer(spec["heads"], i)]
                      for i, src in zip(spec["layers"], layers)},
            "neurons": {src: [by_layer(o["neurons"], src)[n] for n in by_layer(spec["neurons"], i)]
                        for i, src in zip(spec["layers"], layers)},
        }
    return out


def prune_units(clip: Clip, removed: Iterable[Unit], group_sizes: dict[str, int]) -> Clip:
    """A physically smaller copy of `clip` without the `removed` units; the original is untouched.

    info["structure"] records what is kept, in the indices of the unpruned source model.
    """
    model = copy.deepcopy(clip.model)
    structure = kept_structure(model, removed, group_sizes)
    apply_structure(model, structure)
    model.eval()
    info = {**clip.info, "structure": compose(clip.info.get("structure"), structure),
            "source_spec": clip.info.get("source_spec", clip.spec)}
    name = clip.name if clip.name.endswith("(pruned)") else f"{clip.name} (pruned)"
    return Clip(model, clip.tokenizer, clip.preprocess, name, clip.spec, clip.device, info)


def prune(clip: Clip, plan) -> Clip:
    """Apply a Plan: refuses a plan made from another model's scores."""
    if plan.model and plan.model != model_fingerprint(clip.model):
        raise MopeError("these scores were computed on another model (fingerprint mismatch): score this model first")
    pruned = prune_units(clip, plan.removed, plan.group_sizes)
    pruned.info["plan"] = pruned.info.get("plan", []) + [plan.to_dict()]
    return pruned
