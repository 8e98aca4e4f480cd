"""Per-head attention maps for the Scores tab: one head of the session's model beside the same head of a
pruned model (a head the pruning removed shows as removed)."""
from __future__ import annotations

import numpy as np

from mope.attention import HeadAttention, head_attention
from mope.errors import MopeError
from mope.units import Unit

from ..security import check_upload, open_image
from ..state import AppState
from .compare import short_name
from .model import get_model


def parse_head(text: str | None) -> Unit:
    """A head's name as the heatmap and the hover show it (vision.L3.head1)."""
    unit = Unit.parse(str(text or "").strip())
    if unit.kind != "head":
        raise MopeError(f"'{unit.name}' is not a head; click a cell of a heads heatmap, or type e.g. vision.L3.head1")
    return unit


def head_maps(spec: str, other: str | None, head: str | None, image_path: str | None, prompt: str | None,
              state: AppState) -> tuple[dict[str, HeadAttention], np.ndarray | None]:
    """({model: the head's attention}, the image shown beside a vision head's maps)."""
    unit = parse_head(head)
    image = None
    if unit.tower == "vision":
        if not image_path:
            raise MopeError("choose an image (upload one, or press 'Use a sample image')")
        image = open_image(check_upload(image_path, state))
    specs = [spec] + ([other] if other and other != spec else [])
    maps = {short_name(s): head_attention(get_model(s, state), unit.tower, unit.layer, unit.index, image=image,
                                          text=prompt) for s in specs}
    shown = np.asarray(image.resize((160, 160))) if image is not None else None
    return maps, shown


def attention_table(maps: dict[str, HeadAttention]):
    """The maps as a long table for the CSV: model, position (patch row/col or token), weight."""
    import pandas as pd

    rows = []
    for model, m in maps.items():
        if m.weights is None:
            rows.append({"model": model, "position": m.removed, "weight": None})
        elif m.tower == "vision":
            rows += [{"model": model, "position": f"patch ({r}, {c})", "weight": float(m.weights[r, c])}
                     for r in range(m.weights.shape[0]) for c in range(m.weights.shape[1])]
        else:
            rows += [{"model": model, "position": f"{i}: {t}", "weight": float(w)}
                     for i, (t, w) in enumerate(zip(m.tokens, m.weights.tolist()))]
    return pd.DataFrame(rows)
