import open_clip
import pytest
import torch
from conftest import TINY

from mope.short_text import _text, short_length, shortened

TEXTS = ["a red star", "a photo of a small blue circle in the top left corner", "a ring"]


@pytest.fixture(scope="module", params=["CLIP", "CustomTextCLIP"])
def model(request):
    torch.manual_seed(0)
    return getattr(open_clip, request.param)(**TINY).eval()


@pytest.fixture(scope="module")
def tokens():
    return open_clip.SimpleTokenizer(context_length=TINY["text_cfg"]["context_length"])(TEXTS)


def test_a_shortened_text_tower_embeds_its_inputs_as_the_full_context_does(model, tokens):
    length = short_length(model, tokens)
    assert length == int(tokens.argmax(-1).max()) + 1 and length < tokens.shape[1]
    text = _text(model)
    positional, mask = text.positional_embedding, text.attn_mask
    with torch.no_grad():
        full = model.encode_text(tokens)
        with shortened(model, length):
            assert text.positional_embedding.shape[0] == length and text.attn_mask.shape == (length, length)
            short = model.encode_text(tokens[:, :length])
        with shortened(model, length - 1):  # one token too few: the longest input loses its end-of-text token
            cut = model.encode_text(tokens[:, :length - 1])
    assert text.positional_embedding is positional and text.attn_mask is mask  # restored, the same objects
    torch.testing.assert_close(short, full, atol=1e-5, rtol=0)
    assert (cut[1] - full[1]).abs().max() > 1e-2 and torch.allclose(cut[[0, 2]], full[[0, 2]], atol=1e-5)


def test_no_shortening_where_a_token_after_the_pooled_one_counts(model, tokens, monkeypatch):
    text = _text(model)
    assert short_length(model, tokens[:, :int(tokens.argmax(-1).max()) + 1]) is None  # nothing to drop
    pool = "text_pool_type" if hasattr(text, "text_pool_type") else "pool_type"
    monkeypatch.setattr(text, pool, "last")
    assert short_length(model, tokens) is None
    monkeypatch.undo()
    monkeypatch.setattr(text, "attn_mask", None)  # bidirectional attention: the padding is seen
    assert short_length(model, tokens) is None
