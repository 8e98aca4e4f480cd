"""Tab 4: side-by-side comparison, the accuracy-vs-compression study, predictions on a person's images."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image

import mope
from mope.data import shapes
from mope.errors import MopeError
from mope.evaluate import label_probabilities
from mope.io import atomic_write
from mope.study import DEFAULT_RANKINGS

from ..choices import EVALUATION, SHOWN_METRICS
from ..security import check_scores, check_spec, check_upload, open_image
from ..state import AppState
from .jobs import job_state, submit
from .model import get_model, model_card
from .scores import scores_table


def start_study(session: dict, state: AppState) -> tuple[dict, str]:
    if not session["scores"]:
        raise MopeError("compute MoPE scores first: the study prunes by them")
    spec, scores = check_spec(session["spec"], state), check_scores(session["scores"], state)
    df = scores_table(str(scores), state)
    towers = [t for t in ("vision", "text") if t in set(df.tower)][:1]
    rankings = [r for r in DEFAULT_RANKINGS if r in df.columns]
    job = submit(state, "study", {"model": spec, "scores": str(scores), "towers": towers, "rankings": rankings})
    return {**session, "study_job": job}, f"Study started (job {job}): 25 / 50 / 75% of the {towers[0]} tower removed."


def study_table(session: dict, state: AppState) -> tuple[pd.DataFrame | None, str, str]:
    """(study rows, metric, status) for the session's scores: its own job, or any finished study of the same scores."""
    line, _, _, _result = job_state(session["study_job"], state)
    if not session["scores"]:
        return None, "", "No scores yet."
    fingerprint = scores_table(session["scores"], state).attrs.get("fingerprint", "")
    done = [j for j in state.store().jobs() if j["kind"] == "study" and j["status"] == "done"
            and j["result"].get("scores_fingerprint") == fingerprint]
    if done:
        study = pd.read_csv(done[-1]["result"]["study"])
        return study, done[-1]["result"]["metric"], "Accuracy vs compression for these scores."
    return None, "", line if session["study_job"] else "No study for these scores yet: press **Run study**."


def compare(specs: list[str], evaluation: str, n: int, state: AppState, progress=None) -> pd.DataFrame:
    """One row per model: zero-shot metrics, params, GFLOPs and measured latency, side by side."""
    if not specs:
        raise MopeError("pick one to three models to compare")
    if len(specs) > 3:
        raise MopeError("compare at most three models at a time")
    if evaluation not in EVALUATION:
        raise MopeError(f"unknown benchmark '{str(evaluation)[:100]}'; pick one of the list")
    data, kind = EVALUATION[evaluation]
    task = mope.load_task(data, kind=kind, n=int(n))
    rows = []
    for i, spec in enumerate(specs):
        if progress:
            progress(i / len(specs), f"evaluating {spec}")
        clip = get_model(spec, state)
        _headline, card = model_card(spec, state)
        metrics = mope.evaluate(clip, task)
        shown = {k: round(metrics[k], 4) for k in SHOWN_METRICS[kind]}
        rows.append({"model": short_name(spec), "params (M)": round(card["params (M)"].sum(), 3),
                     "vision GFLOPs": card.loc[0, "GFLOPs / sample"], "text GFLOPs": card.loc[1, "GFLOPs / sample"],
                     "image latency (ms)": card.loc[0, "latency, batch 1 (ms)"], **shown})
    return pd.DataFrame(rows)


def short_name(spec: str) -> str:
    """A model's column name: the last two parts of a folder path, the spec itself otherwise."""
    p = Path(spec)
    return f"{p.parent.name}/{p.name}" if len(p.parts) > 2 else spec


def parse_labels(text: str) -> list[str]:
    labels = list(dict.fromkeys(s.strip() for s in str(text or "").replace("\n", ",").split(",") if s.strip()))
    if not labels:
        raise MopeError("type at least one label (comma-separated), e.g. red circle, blue square")
    return labels


def predictions(specs: list[str], files: list[str], labels_text: str, k: int, state: AppState) -> pd.DataFrame:
    """Top-k labels with probabilities for each image (rows) and model (columns)."""
    if not specs:
        raise MopeError("pick at least one model to compare")
    if not files:
        raise MopeError("upload images or press 'Use sample images'")
    labels = parse_labels(labels_text)
    images = [open_image(check_upload(f, state)) for f in files]
    table = pd.DataFrame({"image": [Path(f).name for f in files]})
    for spec in specs[:3]:
        probs = label_probabilities(get_model(spec, state), images, labels)
        top = probs.topk(min(int(k), len(labels)), dim=1)
        table[short_name(spec)] = [", ".join(f"{labels[j]} {p:.0%}" for p, j in zip(ps.tolist(), js.tolist()))
                                   for ps, js in zip(top.values, top.indices)]
    return table


def sample_images(state: AppState, n: int = 6) -> tuple[list[str], str]:
    """(paths, labels): a few shapes-world images written once as PNGs, and labels that include their classes."""
    batch = shapes.sample(n, seed=4242, image_size=192, captions_per_image=1, placement="free")
    paths = [state.home / "samples" / f"shape-free-{i}.png" for i in range(n)]
    for p, im in zip(paths, batch.images):
        if not p.is_file():
            atomic_write(p, lambda tmp, im=im: Image.fromarray(im.numpy()).save(tmp, format="PNG"))
    names = [f"{c} {s}" for c, s in zip(batch.names("colour"), batch.names("shape"))]
    distractors = ["purple hexagon", "orange ring", "cyan cross"]
    return [str(p) for p in paths], ", ".join(dict.fromkeys(names + distractors))
