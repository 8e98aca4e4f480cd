"""Tab 4: side-by-side comparison, the accuracy-vs-compression study, predictions on a person's images."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

import mope
from mope.data import shapes
from mope.errors import MopeError
from mope.evaluation import label_probabilities, per_class_accuracy
from mope.io import atomic_write
from mope.pruned import folder_provenance, provenance
from mope.speed import interleaved_latency
from mope.study import DEFAULT_RANKINGS

from ..choices import EVALUATION, SHOWN_METRICS
from ..security import check_scores, check_spec, check_upload, open_image
from ..state import AppState
from .jobs import job_state, submit
from .model import get_model, model_card
from .scores import scores_calibration, scores_table

STUDY_ITERATIVE = 4  # the K of the study's "MoPE iterative ×K" curve


def start_study(session: dict, state: AppState, iterative: bool = False) -> tuple[dict, str]:
    """A study job of the session's scores; iterative: also MoPE re-scored in K steps on their calibration data."""
    if not session["scores"]:
        raise MopeError("compute MoPE scores first: the study prunes by them")
    spec, scores = check_spec(session["spec"], state), check_scores(session["scores"], state)
    df = scores_table(str(scores), state)
    towers = [t for t in ("vision", "text") if t in set(df.tower)][:1]
    rankings = [r for r in DEFAULT_RANKINGS if r in df.columns]
    params = {"model": spec, "scores": str(scores), "towers": towers, "rankings": rankings}
    if iterative is True:
        data, _protocol, n = scores_calibration(session, state, "the iterative curve")
        params.update(iterative=[STUDY_ITERATIVE], calibration=data, calibration_n=n)
    job = submit(state, "study", params)
    also = f", with MoPE iterative ×{STUDY_ITERATIVE}" if iterative is True else ""
    return {**session, "study_job": job}, (f"Study started (job {job}): 25 / 50 / 75% of the {towers[0]} tower "
                                           f"removed{also}.")


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


@dataclass
class Comparison:
    """What Compare shows: the side-by-side table, how latency was measured, per-class accuracy (classification)."""

    table: pd.DataFrame
    latency_note: str
    per_class: pd.DataFrame | None
    models: list[str]


def compare(specs: list[str], evaluation: str, n: int, state: AppState, progress=None) -> Comparison:
    """One row per model: where it comes from, zero-shot metrics, params, GFLOPs and latency measured now,
    back to back (interleaved, same batch, same device, median of repeats); per-class accuracy side by side."""
    if not specs:
        raise MopeError("pick one to three models to compare")
    if len(specs) > 3:
        raise MopeError("compare at most three models at a time")
    if evaluation not in EVALUATION:
        raise MopeError(f"unknown benchmark '{str(evaluation)[:100]}'; pick one of the list")
    data, kind = EVALUATION[evaluation]
    task = mope.load_task(data, protocol=kind, n=int(n))
    clips, rows = {}, []
    for i, spec in enumerate(specs):
        if progress:
            progress(i / (len(specs) + 1), f"evaluating {spec}")
        clip = clips[short_name(spec)] = get_model(spec, state)
        _headline, card = model_card(spec, state)
        metrics = mope.evaluate(clip, task)
        rows.append({"model": short_name(spec), "origin": provenance(clip),
                     "params (M)": round(card["params (M)"].sum(), 3), "vision GFLOPs": card.loc[0, "GFLOPs / sample"],
                     "text GFLOPs": card.loc[1, "GFLOPs / sample"],
                     **{k: round(metrics[k], 4) for k in SHOWN_METRICS[kind]}})
    if progress:
        progress(len(specs) / (len(specs) + 1), "timing the models back to back")
    table, note = _with_latency(pd.DataFrame(rows), clips)
    per_class = per_class_accuracy(clips, task).round(4) if kind == "zeroshot" else None
    return Comparison(table, note, per_class, list(clips))


LATENCY_REPEATS = 7


def _with_latency(table: pd.DataFrame, clips: dict[str, mope.Clip]) -> tuple[pd.DataFrame, str]:
    """The table with each tower's batch-1 latency, timed now for all models interleaved; and how it was timed."""
    devices = {str(c.device) for c in clips.values()}
    if len(devices) > 1:
        return table, f"Latency not measured: the models sit on different devices ({', '.join(sorted(devices))})."
    note = ""
    for tower, column in (("vision", "image latency (ms)"), ("text", "text latency (ms)")):
        timed = interleaved_latency(clips, tower, batch=1, repeats=LATENCY_REPEATS).set_index("model")
        table[column] = [round(timed.loc[m, "median (ms)"], 2) for m in table.model]
        note = timed.attrs["device"]
    return table, (f"Latency: batch 1, median of {LATENCY_REPEATS} rounds in which every model runs once, back to "
                   f"back on the same input (order rotated each round), measured just now on **{note}**.")


def short_name(spec: str) -> str:
    """A model's column name: the last two parts of a folder path, the spec itself otherwise."""
    p = Path(spec)
    return f"{p.parent.name}/{p.name}" if len(p.parts) > 2 else spec


def parse_labels(text: str) -> list[str]:
    labels = list(dict.fromkeys(s.strip() for s in str(text or "").replace("\n", ",").split(",") if s.strip()))
    if not labels:
        raise MopeError("type at least one label (comma-separated), e.g. red circle, blue square")
    return labels


@dataclass
class Predictions:
    """Top-k per image and model (a table, one note per image that could not be read), and every label's
    probability per model for the bars."""

    table: pd.DataFrame
    names: list[str]
    labels: list[str]
    probs: dict[str, np.ndarray]
    errors: dict[int, str]

    def long_table(self) -> pd.DataFrame:
        """Every label's probability per image and model, one row each (for the CSV)."""
        return pd.DataFrame([{"image": image, "model": model, "label": label, "probability": round(float(p[i, j]), 5)}
                             for model, p in self.probs.items() for i, image in enumerate(self.names)
                             if i not in self.errors for j, label in enumerate(self.labels)])


def predictions(specs: list[str], files: list[str], labels_text: str, k: int, state: AppState) -> Predictions:
    """Each readable image's top-k labels per model; an unreadable one gets its reason and the others still
    get their predictions."""
    if not specs:
        raise MopeError("pick at least one model to compare")
    if not files:
        raise MopeError("upload images or press 'Use sample images'")
    labels = parse_labels(labels_text)
    names, images, errors = [Path(f).name for f in files], {}, {}
    for i, f in enumerate(files):
        try:
            images[i] = open_image(check_upload(f, state))
        except MopeError as e:
            errors[i] = str(e)
    if not images:
        raise MopeError("none of the images could be read: " + "; ".join(errors.values()))
    probs = {short_name(s): _all_probabilities(get_model(s, state), images, len(files), labels) for s in specs[:3]}
    table = pd.DataFrame({"image": names})
    for name, p in probs.items():
        top = np.argsort(-p, axis=1)[:, : min(int(k), len(labels))]
        table[name] = ["" if i in errors else ", ".join(f"{labels[j]} {p[i, j]:.0%}" for j in top[i])
                       for i in range(len(files))]
    table["note"] = [errors.get(i, "") for i in range(len(files))]
    return Predictions(table, names, labels, probs, errors)


def _all_probabilities(clip: mope.Clip, images: dict[int, Image.Image], n: int, labels: list[str]) -> np.ndarray:
    """(n, labels) probabilities; rows of images that could not be read stay 0."""
    out = np.zeros((n, len(labels)))
    rows = sorted(images)
    out[rows] = label_probabilities(clip, [images[i] for i in rows], labels).numpy()
    return out


def sketch_predictions(specs: list[str], sketch, labels_text: str, state: AppState) -> Predictions:
    """The probabilities of each typed label for a drawing (the sketchpad's composite, on white)."""
    if not specs:
        raise MopeError("pick at least one model to compare")
    image = sketch_image(sketch)
    if image is None:
        raise MopeError("draw something first")
    labels = parse_labels(labels_text)
    probs = {short_name(s): label_probabilities(get_model(s, state), [image], labels).numpy() for s in specs[:3]}
    table = pd.DataFrame([{"image": "your drawing", **{n: ", ".join(f"{labels[j]} {p[0, j]:.0%}"
                                                                   for j in np.argsort(-p[0])[:3]) for n, p in probs.items()}}])
    return Predictions(table, ["your drawing"], labels, probs, {})


def sketch_image(sketch) -> Image.Image | None:
    """The drawing as an RGB image on white, or None when nothing is drawn (an ImageEditor value or an array)."""
    composite = sketch.get("composite") if isinstance(sketch, dict) else sketch
    if composite is None:
        return None
    array = np.asarray(composite)
    if array.ndim != 3 or array.size == 0 or array.shape[0] * array.shape[1] > 4096 * 4096:
        return None
    image = Image.fromarray(array.astype(np.uint8))
    if image.mode == "RGBA":
        if image.getchannel("A").getextrema()[1] == 0:
            return None
        white = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(white, image)
    return image.convert("RGB")


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


def add_samples(files: list[str] | None, labels_text: str | None, state: AppState) -> tuple[list[str], str, str]:
    """(images, labels, message): the sample images added after the person's own (never replacing them), and
    their labels added to the typed ones."""
    paths, sample_labels = sample_images(state)
    names = {Path(p).name for p in paths}
    own = [f for f in (files or []) if Path(f).name not in names]  # the page sends its own copies of the samples
    typed = [s.strip() for s in str(labels_text or "").replace("\n", ",").split(",") if s.strip()]
    labels = ", ".join(dict.fromkeys(typed + sample_labels.split(", ")))
    kept = f", after your {len(own)} image{'s' * (len(own) != 1)}" if own else ""
    return own + paths, labels, f"Added {len(paths)} sample images{kept}, and their labels to yours."


def origins(specs: list[str] | None, state: AppState) -> str:
    """Where each picked model comes from (original / pruned by which plan / distilled how long), as a list."""
    lines = []
    for spec in (specs or [])[:3]:
        try:
            path = Path(check_spec(spec, state))
            origin = folder_provenance(path) if path.is_dir() else "original (not pruned)"
        except MopeError as e:
            origin = f"cannot be used: {e}"
        lines.append(f"- **{short_name(spec)}** — {origin}")
    return "\n".join(lines)
