import copy

import torch
from conftest import DEVICE

import mope
from mope.ablation import MaskedBlock, ablated, masked_block_forward, starting_at
from mope.units import Unit, tower_blocks


def _model(tiny_dir):
    return mope.load_model(str(tiny_dir), device=DEVICE)


def _images(n=6):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(DEVICE)


def test_ablation_restores_weights_bit_exactly(tiny_dir):
    clip = _model(tiny_dir)
    before = copy.deepcopy(clip.model.state_dict())
    units = [Unit("vision", "head", 0, 1), Unit("text", "neurons", 1, 0), Unit("vision", "layer", 1)]
    with torch.inference_mode(), ablated(clip.model, units, {"vision": 64, "text": 64}):
        changed = clip.model.encode_image(_images())
    after = clip.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.allclose(changed, clip.model.encode_image(_images()))
    assert not tower_blocks(clip.model, "vision")[1]._forward_hooks


def test_removed_layer_equals_deleting_the_block(tiny_dir):
    clip = _model(tiny_dir)
    with torch.inference_mode():
        with ablated(clip.model, [Unit("vision", "layer", 0)], {}):
            a = clip.model.encode_image(_images())
        blocks = clip.model.visual.transformer.resblocks
        clip.model.visual.transformer.resblocks = torch.nn.ModuleList([blocks[1]])
        b = clip.model.encode_image(_images())
    assert torch.equal(a, b)


def test_masked_block_matches_block_and_weight_zeroing(tiny_dir):
    clip = _model(tiny_dir)
    for tower, mask in (("vision", None), ("text", clip.model.attn_mask)):
        block = tower_blocks(clip.model, tower)[0]
        d, h, f = block.attn.embed_dim, block.attn.num_heads, block.mlp.c_fc.out_features
        s = 16 if tower == "text" else 17
        x = torch.randn(3, s, d, generator=torch.Generator().manual_seed(0)).to(DEVICE)
        ones_h, ones_f = torch.ones(3, h, device=DEVICE), torch.ones(3, f, device=DEVICE)
        no = torch.zeros(3, dtype=torch.bool, device=DEVICE)
        with torch.inference_mode():
            assert torch.allclose(masked_block_forward(block, x, mask, ones_h, ones_f, no), block(x, attn_mask=mask), atol=1e-5)
            hm = ones_h.clone()
            hm[:, 1] = 0
            fm = ones_f.clone()
            fm[:, 64:] = 0
            with ablated(clip.model, [Unit(tower, "head", 0, 1), Unit(tower, "neurons", 0, 1)], {tower: 64}):
                ref = block(x, attn_mask=mask)
            assert torch.allclose(masked_block_forward(block, x, mask, hm, fm, no), ref, atol=1e-5)
            skip = torch.tensor([True, False, True], device=DEVICE)
            out = masked_block_forward(block, x, mask, ones_h, ones_f, skip)
            assert torch.equal(out[0], x[0]) and not torch.allclose(out[1], x[1])


def test_starting_at_reruns_only_later_layers(tiny_dir):
    clip = _model(tiny_dir)
    model = clip.model
    captured = []
    hook = tower_blocks(model, "vision")[1].register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    with torch.inference_mode():
        full = model.encode_image(_images())
        hook.remove()
        block = tower_blocks(model, "vision")[1]
        first = MaskedBlock(block, captured[0], torch.ones(6, 4, device=DEVICE), torch.ones(6, 128, device=DEVICE),
                            torch.zeros(6, dtype=torch.bool, device=DEVICE))
        calls = []
        h0 = tower_blocks(model, "vision")[0].register_forward_hook(lambda *a: calls.append(1))
        with starting_at(model, "vision", first, 1):
            resumed = model.encode_image(_images())
        h0.remove()
    assert not calls
    assert torch.allclose(full, resumed, atol=1e-5)
    assert len(model.visual.transformer.resblocks) == 2
