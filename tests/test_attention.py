import pytest
import torch
from PIL import Image

import mope
from mope.attention import head_attention, source_position
from mope.errors import MopeError
from mope.surgery import prune_units
from mope.units import Unit, tower_blocks


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return mope.load_model(str(tiny_dir), device="cpu")


@pytest.fixture(scope="module")
def image():
    torch.manual_seed(1)
    return Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy())


def reference_weights(clip, tower, layer, x):
    """nn.MultiheadAttention's own per-head weights for the block's input, captured before the block."""
    block = tower_blocks(clip.model, tower)[layer]
    seen = {}
    hook = block.register_forward_pre_hook(lambda m, args, kw: seen.update(x=args[0], mask=kw.get("attn_mask")),
                                           with_kwargs=True)
    with torch.inference_mode():
        (clip.model.encode_image if tower == "vision" else clip.model.encode_text)(x)
        hook.remove()
        y = block.ln_1(seen["x"])
        mask = seen["mask"].to(y.dtype) if seen["mask"] is not None else None
        return block.attn(y, y, y, need_weights=True, average_attn_weights=False, attn_mask=mask)[1][0]


@pytest.mark.parametrize("layer,head", [(0, 0), (1, 3)])
def test_vision_head_matches_multihead_attention(tiny, image, layer, head):
    got = head_attention(tiny, "vision", layer, head, image=image)
    ref = reference_weights(tiny, "vision", layer, tiny.preprocess(image).unsqueeze(0))[head, 0]
    grid = tiny.model.visual.grid_size
    assert got.weights.shape == grid
    torch.testing.assert_close(got.weights.flatten(), ref[1:], rtol=1e-5, atol=1e-6)
    assert got.self_weight == pytest.approx(ref[0].item(), abs=1e-6)
    assert got.weights.sum().item() + got.self_weight == pytest.approx(1.0, abs=1e-5)


def test_text_head_is_the_end_of_text_row(tiny):
    prompt = "a photo of a red star"
    got = head_attention(tiny, "text", 1, 1, text=prompt)
    ids = tiny.tokenizer([prompt])
    eot = ids[0].argmax().item()
    ref = reference_weights(tiny, "text", 1, ids)[1, eot]
    assert got.tokens[0] == "<start_of_text>" and got.tokens[-1] == "<end_of_text>"
    assert got.tokens[1:-1] == ["a", "photo", "of", "a", "red", "star"]
    torch.testing.assert_close(got.weights, ref[:eot + 1], rtol=1e-5, atol=1e-6)
    assert got.weights.sum().item() == pytest.approx(1.0, abs=1e-5)  # causal: nothing after the end token


def test_pruned_model_maps_kept_heads_to_source_indices(tiny, image):
    # heads 0 and 2 of vision layer 1 and all of layer 0's neurons stay; layer 1's input is unchanged
    removed = [Unit("vision", "head", 1, h) for h in (1, 3)] + [Unit("text", "layer", 0)]
    pruned = prune_units(tiny, removed, {"vision": 1, "text": 1})
    assert source_position(pruned, "vision", 1, 2) == (1, 1)
    for h in (0, 2):
        a = head_attention(tiny, "vision", 1, h, image=image)
        b = head_attention(pruned, "vision", 1, h, image=image)
        assert b.removed is None
        torch.testing.assert_close(a.weights, b.weights, rtol=1e-5, atol=1e-6)
    gone = head_attention(pruned, "vision", 1, 3, image=image)
    assert gone.removed == "head removed" and gone.weights is None
    layer_gone = head_attention(pruned, "text", 0, 0, text="a star")
    assert layer_gone.removed == "layer removed" and layer_gone.tokens[-1] == "<end_of_text>"
    kept_text = head_attention(pruned, "text", 1, 0, text="a star")  # source layer 1 is block 0 now
    assert kept_text.removed is None and kept_text.weights.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_pruned_model_saved_and_loaded_keeps_the_mapping(tiny, image, tmp_path):
    pruned = prune_units(tiny, [Unit("vision", "head", 0, 1)], {"vision": 1, "text": 1})
    mope.save_pruned(pruned, tmp_path / "p")
    loaded = mope.load_model(str(tmp_path / "p"), device="cpu")
    assert source_position(loaded, "vision", 0, 2) == (0, 1)
    torch.testing.assert_close(head_attention(loaded, "vision", 0, 2, image=image).weights,
                               head_attention(tiny, "vision", 0, 2, image=image).weights, rtol=1e-5, atol=1e-6)
    assert head_attention(loaded, "vision", 0, 1, image=image).removed == "head removed"


def test_bad_requests_are_clear_errors(tiny, image):
    with pytest.raises(MopeError, match="no head 9"):
        head_attention(tiny, "vision", 0, 9, image=image)
    with pytest.raises(MopeError, match="choose an image"):
        head_attention(tiny, "vision", 0, 0)
    with pytest.raises(MopeError, match="type a prompt"):
        head_attention(tiny, "text", 0, 0, text="  ")
