"""What the app's events do, as functions of plain values: testable without a browser.

Heavy work goes through `mope` (in this process, for seconds-long things: loading, a model card,
a comparison, predictions) or the job worker (scoring, studies, prune-and-distill). A person's
selections live in a `session` dict kept in their browser, so a reload or an app restart finds them.
Errors a person can cause raise MopeError with a sentence saying what to do; ui.py shows it.
"""
from __future__ import annotations

import shutil
import threading
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

import mope
from mope import units as mope_units
from mope.data import shapes
from mope.data.tasks import IMAGE_EXTENSIONS
from mope.evaluate import label_probabilities, metric_names
from mope.io import atomic_write
from mope.jobs import Store, ensure_worker
from mope.plan import Budget
from mope.runners import scores_path
from mope.scoring import baseline_correlations, cached_scores, load_scores, save_scores, unit_table
from mope.settings import DEMO_DIR, default_device, mope_home
from mope.specs import looks_like_path
from mope.speed import gflops_per_sample, latency_seconds

from .choices import CALIBRATION, EVALUATION, NEW_SESSION, PRESET_MODELS, SHOWN_METRICS

MAX_PIXELS = 40_000_000  # larger uploads are refused before decoding (decompression bombs)
MAX_ZIP_BYTES = 500 * 2**20  # uncompressed size of an uploaded calibration zip


@dataclass
class Settings:
    """What this app instance may read; it writes under $MOPE_HOME (models, uploads, results, jobs)."""

    model_dirs: list[Path] = field(default_factory=list)  # local models load from these folders only
    data_dirs: list[Path] = field(default_factory=list)   # server-side data folders allowed
    start_worker: bool = True

    def __post_init__(self):
        self.model_dirs = [Path(p).expanduser().resolve() for p in [self.saved_dir, *self.model_dirs]]
        self.data_dirs = [Path(p).expanduser().resolve() for p in [self.home / "uploads", *self.data_dirs]]

    @property
    def home(self) -> Path:
        return mope_home()

    @property
    def saved_dir(self) -> Path:
        return self.home / "models"

    def store(self) -> Store:
        return _store(self.home / "jobs")


_STORES: dict[Path, Store] = {}


def _store(root: Path) -> Store:
    if root not in _STORES:
        _STORES[root] = Store(root)
    return _STORES[root]


def session_of(value: dict | None) -> dict:
    """A session dict with every key, whatever the browser kept."""
    return {**NEW_SESSION, **(value or {})}


# --- model -----------------------------------------------------------------------------------------------

def allowed_path(path: str | Path, roots: list[Path], what: str) -> Path:
    """`path` resolved, refusing anything outside `roots` (symlinks and '..' resolved first)."""
    resolved = Path(path).expanduser().resolve()
    if not any(resolved == r or resolved.is_relative_to(r) for r in roots):
        raise mope.MopeError(f"{path} is outside the {what} folders this app may read "
                             f"({', '.join(map(str, roots))}); start the app with --{what}s DIR to allow it")
    return resolved


def check_spec(spec: str, settings: Settings) -> str:
    """The spec, stripped; local files and folders must lie in the configured model folders."""
    spec = (spec or "").strip()
    if not spec:
        raise mope.MopeError("type a model spec: demo, NAME:TAG, hf-hub:ORG/REPO or a folder in the model folders")
    if spec == "demo" or spec.startswith("hf-hub:"):
        return spec
    head, sep, rest = spec.partition(":")
    path = rest if head == "local-dir" or (sep and looks_like_path(rest)) else None
    if path is None and (looks_like_path(spec) or Path(spec).expanduser().exists()):
        path = spec
    if path is not None:
        allowed_path(path, settings.model_dirs + [DEMO_DIR], "model")
    return spec


_MODELS: OrderedDict[str, mope.Clip] = OrderedDict()
_MODELS_LOCK = threading.Lock()


def get_model(spec: str, settings: Settings, keep: int = 4) -> mope.Clip:
    """A loaded model, shared by every session (the last `keep` specs stay in memory)."""
    spec = check_spec(spec, settings)
    with _MODELS_LOCK:
        if spec in _MODELS:
            _MODELS.move_to_end(spec)
            return _MODELS[spec]
    clip = mope.load_model(spec, device=default_device())
    with _MODELS_LOCK:
        _MODELS[spec] = clip
        while len(_MODELS) > keep:
            _MODELS.popitem(last=False)
    return clip


_CARDS: dict[str, tuple[str, pd.DataFrame]] = {}


def model_card(spec: str, settings: Settings) -> tuple[str, pd.DataFrame]:
    """(headline, per-tower table: layers, heads, FFN width, params, GFLOPs, measured latency)."""
    clip = get_model(spec, settings)
    key = f"{clip.spec}@{clip.device}"
    if key not in _CARDS:
        summary = mope_units.model_summary(clip.model)
        rows = []
        for tower in mope_units.TOWERS:
            s = summary[tower]
            rows.append({"tower": tower, "layers": s["layers"], "width": s["width"], "heads / layer": _compact(s["heads"]),
                         "FFN width": _compact(s["ffn"]), "params (M)": round(s["params"] / 1e6, 3),
                         "GFLOPs / sample": round(gflops_per_sample(clip, tower), 4),
                         "latency, batch 1 (ms)": round(latency_seconds(clip, tower, 1) * 1e3, 2),
                         "throughput, batch 32 (/s)": round(32 / latency_seconds(clip, tower, 32, repeats=3), 1)})
        headline = (f"**{clip.name}** · {summary['params'] / 1e6:.2f} M parameters in all · on {clip.device} · "
                    f"image size {clip.model.visual.image_size}")
        _CARDS[key] = (headline, pd.DataFrame(rows))
    return _CARDS[key]


def _compact(values: list[int]) -> str:
    return str(values[0]) if len(set(values)) == 1 else ", ".join(map(str, values))


# --- scores ----------------------------------------------------------------------------------------------

def calibration_spec(source: str, upload: str | None, folder: str | None, settings: Settings) -> tuple[str, str]:
    """(data spec, task kind) for a calibration choice; an uploaded zip is unpacked under the uploads folder."""
    if source not in CALIBRATION:
        raise mope.MopeError(f"unknown calibration data '{source}'; pick one of the list")
    spec, kind = CALIBRATION[source]
    if source.startswith("uploaded"):
        if not upload:
            raise mope.MopeError("upload a .zip of an image folder (one sub-folder per class) first")
        return f"folder:{unpack_zip(upload, settings)}", kind
    if source == "server folder":
        if not (folder or "").strip():
            raise mope.MopeError("type a folder path inside the allowed data folders")
        return f"folder:{allowed_path(folder.strip(), settings.data_dirs, 'data')}", kind
    return spec, kind


def unpack_zip(path: str | Path, settings: Settings) -> Path:
    """Images of a zip, extracted once under uploads/<hash>/: no absolute paths, no '..', bounded size."""
    import hashlib

    path = Path(path)
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile):
        raise mope.MopeError(f"{path.name} is not a readable .zip file; zip a folder with one sub-folder per class") from None
    target = settings.home / "uploads" / digest
    if target.is_dir():
        return _class_root(target)
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and m.filename.lower().endswith(IMAGE_EXTENSIONS)]
        if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
            raise mope.MopeError(f"{path.name} unpacks to more than {MAX_ZIP_BYTES >> 20} MB; upload fewer images")
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        for m in members:
            out = (staging / m.filename).resolve()
            if not out.is_relative_to(staging.resolve()):
                raise mope.MopeError(f"{path.name} has an unsafe path ({m.filename}); zip a plain folder")
            out.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(m) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
    if not members:
        raise mope.MopeError(f"{path.name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    staging.rename(target)
    return _class_root(target)


def _class_root(folder: Path) -> Path:
    """A zip of `animals/cat/…` unpacks with one top folder: the classes are one level down."""
    entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() and any(
        p.is_dir() for p in entries[0].iterdir()) else folder


def metric_choices(source: str) -> list[str]:
    """The metrics the calibration choice can be scored by; "" for its default (acc1 / recall_mean)."""
    return [""] + metric_names(CALIBRATION[source][1])


def start_scores(session: dict, source: str, upload: str | None, folder: str | None, metric: str | None, n: int,
                 towers: list[str], settings: Settings) -> tuple[dict, str]:
    """Cached scores at once; otherwise a score job. Returns (session, message)."""
    session = session_of(session)
    if not towers:
        raise mope.MopeError("pick at least one tower to score")
    data, kind = calibration_spec(source, upload, folder, settings)
    clip = get_model(session["spec"], settings)
    task = mope.load_task(data, kind=kind, n=int(n))
    metric = metric or None
    kw = dict(towers=list(towers), units=["head", "neurons", "layer"], metric=metric)
    hit = cached_scores(clip, task, **kw)
    if hit is not None:
        path = scores_path(hit.attrs["fingerprint"])
        if not path.exists():
            save_scores(hit, path)
        return {**session, "scores": str(path), "score_job": None}, f"Cached scores for {task.name} — shown at once."
    store = settings.store()
    job = store.submit("score", {"model": session["spec"], "data": data, "task": kind, "n": int(n), **kw})
    _ensure_worker(store, settings)
    return {**session, "score_job": job}, f"Scoring started (job {job}): {task.name}, metric {metric or 'default'}."


def _ensure_worker(store: Store, settings: Settings) -> None:
    if settings.start_worker:
        ensure_worker(store, idle_exit=600)


_SCORES: dict[str, pd.DataFrame] = {}


def scores_table(path: str) -> pd.DataFrame:
    """A scores CSV, read once per process (the files never change: they are named by fingerprint)."""
    if path not in _SCORES:
        _SCORES[path] = load_scores(path)
    return _SCORES[path]


def scores_state(session: dict, settings: Settings) -> tuple[dict, pd.DataFrame | None, int | None, str]:
    """(session, the scores so far or final, units in all when still running, status line) — follows the job."""
    session = session_of(session)
    job_id = session["score_job"]
    if job_id:
        job = job_or_none(settings.store(), job_id)
        if job is None:
            return {**session, "score_job": None}, None, None, f"Job {job_id} is gone from the job store."
        if job["status"] in ("queued", "running"):
            params = job["params"]
            frame = partial_scores(get_model(params["model"], settings), params["towers"], params["units"], job["partial"])
            return session, frame, len(frame), _progress_line(job)
        session = {**session, "score_job": None}
        if job["status"] == "done":
            session["scores"] = job["result"]["scores"]
        else:
            return session, _scores_or_none(session), None, _ended_line(job)
    df = _scores_or_none(session)
    if df is None:
        return session, None, None, "No scores yet: pick calibration data and press **Compute MoPE scores**."
    return session, df, None, (f"{len(df)} units scored · metric **{df.attrs.get('metric', '?')}** · "
                               f"{Path(session['scores']).name}")


_SKELETONS: dict[tuple, pd.DataFrame] = {}


def partial_scores(clip: mope.Clip, towers: list[str], kinds: list[str], rows: list[dict]) -> pd.DataFrame:
    """Every unit of the model with the MoPE scored so far (NaN for the rest), so heatmaps keep their shape.

    The unit table (sizes, baselines, the model's fingerprint) is built once per model and settings, not at
    every timer tick of a running job.
    """
    key = (clip.spec, str(clip.device), tuple(towers), tuple(kinds))
    if key not in _SKELETONS:
        _SKELETONS[key] = unit_table(clip, towers, kinds)
    skeleton = _SKELETONS[key]
    done = pd.DataFrame(rows, columns=["unit", "mope"]) if rows else pd.DataFrame(columns=["unit", "mope"])
    frame = skeleton.merge(done[["unit", "mope"]], on="unit", how="left").astype({"mope": float})
    frame.attrs["scored"] = len(done)
    return frame


def _scores_or_none(session: dict) -> pd.DataFrame | None:
    if session["scores"] and Path(session["scores"]).is_file():
        return scores_table(session["scores"])
    return None


def job_or_none(store: Store, job_id: str) -> dict | None:
    try:
        return store.get(job_id)
    except mope.MopeError:
        return None


def _progress_line(job: dict) -> str:
    p = job["progress"]
    if job["status"] == "queued" or not p:
        return f"Job {job['id']} ({job['kind']}) is queued — waiting for the worker."
    eta = f", about {p['eta']:.0f} s left" if p.get("eta") is not None else ""
    filled = round(20 * p["step"] / max(p["total"], 1))
    return (f"`{'█' * filled}{'░' * (20 - filled)}` Job {job['id']} ({job['kind']}): {p['step']}/{p['total']}"
            f"{eta} — {p.get('message', '')}")


def _ended_line(job: dict) -> str:
    if job["status"] == "failed":
        return f"Job {job['id']} ({job['kind']}) failed: {job['error']}"
    return f"Job {job['id']} ({job['kind']}) was {job['status']}."


def correlations(df: pd.DataFrame) -> pd.DataFrame:
    return baseline_correlations(df[df.kind != "layer"]).round(3)


# --- plan preview ----------------------------------------------------------------------------------------

def budget_of(mode: str, keep_vision: float, keep_text: float, strategy: str, measure: str, layers_vision: int,
              layers_text: int, heads_vision: int, groups_vision: int, heads_text: int, groups_text: int) -> Budget:
    """The Budget the controls describe: keep fractions per tower, or explicit counts per layer."""
    layers = {t: int(n) for t, n in (("vision", layers_vision), ("text", layers_text)) if n}
    if mode == "explicit counts":
        heads = {t: int(n) for t, n in (("vision", heads_vision), ("text", heads_text)) if n}
        neurons = {t: int(n) for t, n in (("vision", groups_vision), ("text", groups_text)) if n}
        towers = tuple(sorted(set(heads) | set(neurons) | set(layers))) or ("vision",)
        return Budget(heads=heads or None, neurons=neurons or None, layers=layers or None, strategy=strategy,
                      measure=measure, towers=towers)
    keep = {t: float(k) for t, k in (("vision", keep_vision), ("text", keep_text)) if k < 1}
    towers = tuple(sorted(set(keep) | set(layers))) or ("vision",)
    return Budget(keep=keep or None, layers=layers or None, strategy=strategy, measure=measure, towers=towers)


def preview(df: pd.DataFrame, budget: Budget, by: str) -> tuple[mope.Plan, pd.DataFrame, str]:
    """(plan, before → after table, notes) — pure: no model, no scoring."""
    towers = set(df.tower)
    missing = [t for t in budget.towers if t not in towers]
    if missing:
        raise mope.MopeError(f"these scores have no {' or '.join(missing)} tower: score it, or leave its budget at 1")
    if budget.per_tower("layers") and "layer" not in set(df.kind):
        raise mope.MopeError("these scores have no layer units: recompute them to plan depth pruning")
    p = mope.plan(df, budget, by=by)
    table = p.summary()
    for what in ("params", "GFLOPs"):
        table[f"{what} kept"] = (table[f"{what} after"] / table[f"{what} before"]).map("{:.0%}".format)
    table["GFLOPs before"] = table["GFLOPs before"].round(4)
    table["GFLOPs after"] = table["GFLOPs after"].round(4)
    notes = list(p.notes)
    if budget.per_tower("layers"):
        notes.append("Layers here are ranked by the original model's layer scores; pruning re-scores them on the "
                     "width-pruned model first (width, then depth), so the job may pick other layers.")
    return p, table, "\n".join(f"- {n}" for n in notes) or "- Nothing removed."


# --- prune & distill -------------------------------------------------------------------------------------

def start_prune_distill(session: dict, budget: Budget, by: str, device: str, steps: int, batch_size: int,
                        data: str, name: str, settings: Settings) -> tuple[dict, str]:
    """Submit a prune-and-distill job that prunes exactly the previewed plan (same scores, same budget)."""
    from dataclasses import asdict

    session = session_of(session)
    if not session["scores"]:
        raise mope.MopeError("compute MoPE scores first (tab 2): the plan ranks units by them")
    if device == "cuda" and not torch.cuda.is_available():
        raise mope.MopeError("this machine has no CUDA GPU: choose auto or cpu")
    data = _training_data(data, settings)
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in (name or "").strip()) or "pruned"
    out = settings.saved_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    params = {"model": session["spec"], "out": str(out), "scores": session["scores"], "budget": asdict(budget),
              "by": by, "distill_data": data, "steps": int(steps), "batch_size": int(batch_size),
              "eval_every": max(1, int(steps) // 5), "device": None if device == "auto" else device}
    store = settings.store()
    job = store.submit("prune-and-distill", params)
    _ensure_worker(store, settings)
    return {**session, "pd_job": job}, f"Prune & distill started (job {job}) → {out}"


def _training_data(spec: str, settings: Settings) -> str:
    spec = (spec or "shapes").strip()
    head, _, rest = spec.partition(":")
    if head in ("pairs", "wds"):
        allowed_path(Path(rest).parent if head == "wds" else rest, settings.data_dirs, "data")
    elif spec != "shapes":
        raise mope.MopeError(f"unknown training data '{spec}'; use shapes, pairs:FILE or wds:/path/shard-*.tar")
    return spec


def job_state(job_id: str | None, settings: Settings) -> tuple[str, list[dict], list[dict], dict | None]:
    """(status line, loss curve, eval history, result) of a job."""
    if not job_id:
        return "No job started from this browser yet.", [], [], None
    job = job_or_none(settings.store(), job_id)
    if job is None:
        return f"Job {job_id} is gone from the job store.", [], [], None
    line = _progress_line(job) if job["status"] in ("queued", "running") else _ended_line(job)
    if job["status"] == "done" and job["result"]:
        line += f" Saved: {job['result'].get('model', '')}"
    return line, job["curve"], job["history"], job["result"]


def cancel(job_id: str | None, settings: Settings) -> str:
    if not job_id:
        raise mope.MopeError("no job to cancel")
    settings.store().cancel(job_id)
    return f"Cancel requested for job {job_id}: it stops at its next step and keeps its last checkpoint."


def resume(job_id: str | None, settings: Settings) -> tuple[str, str]:
    """(new job id, message) continuing a failed or cancelled distillation from its checkpoint."""
    if not job_id:
        raise mope.MopeError("no job to resume")
    store = settings.store()
    new = store.resume(job_id)
    _ensure_worker(store, settings)
    return new, f"Resumed as job {new}, from the last checkpoint of {job_id}."


def jobs_table(settings: Settings) -> pd.DataFrame:
    rows = []
    for job in reversed(settings.store().jobs()):
        p = job["progress"]
        rows.append({"job": job["id"], "kind": job["kind"], "status": job["status"],
                     "progress": f"{p['step']}/{p['total']}" if p else "",
                     "model": job["params"].get("model") or job["params"].get("student", ""),
                     "started": time.strftime("%H:%M:%S", time.localtime(job["created"])),
                     "result / error": job["error"] or str((job["result"] or {}).get("model", ""))})
    return pd.DataFrame(rows, columns=["job", "kind", "status", "progress", "model", "started", "result / error"])


def model_choices(saved: list[str]) -> list[str]:
    """The model list: the demo, the saved models (saved_models), then the preset hub models."""
    return [PRESET_MODELS[0], *saved, *PRESET_MODELS[1:]]


def saved_models(settings: Settings) -> list[str]:
    """Pruned (and distilled) model folders under the models folder, newest first."""
    found = [p.parent for p in settings.saved_dir.glob("**/pruning.json") if not p.parent.name.startswith(".")]
    return [str(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def model_zip(folder: str, settings: Settings) -> str:
    """A zip of a saved model folder for download (made once, atomically)."""
    if not folder:
        raise mope.MopeError("pick a saved model to download")
    path = allowed_path(folder, [settings.saved_dir.resolve()], "model")
    if not (path / "pruning.json").is_file():
        raise mope.MopeError(f"{path} is not a saved model folder")
    target = settings.home / "downloads" / f"{path.parent.name}-{path.name}.zip"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = shutil.make_archive(str(target.with_suffix("")) + ".partial", "zip", path)
        Path(partial).rename(target)
    return str(target)


# --- study, compare, predictions -------------------------------------------------------------------------

def start_study(session: dict, settings: Settings) -> tuple[dict, str]:
    session = session_of(session)
    if not session["scores"]:
        raise mope.MopeError("compute MoPE scores first: the study prunes by them")
    df = scores_table(session["scores"])
    towers = [t for t in ("vision", "text") if t in set(df.tower)][:1]
    rankings = [r for r in ("mope", "magnitude", "random") if r in df.columns]
    store = settings.store()
    job = store.submit("study", {"model": session["spec"], "scores": session["scores"], "towers": towers,
                                 "rankings": rankings})
    _ensure_worker(store, settings)
    return {**session, "study_job": job}, f"Study started (job {job}): 25 / 50 / 75% of the {towers[0]} tower removed."


def study_table(session: dict, settings: Settings) -> tuple[pd.DataFrame | None, str, str]:
    """(study rows, metric, status) for the session's scores: its own job, or any finished study of the same scores."""
    session = session_of(session)
    line, _, _, result = job_state(session["study_job"], settings)
    if not session["scores"]:
        return None, "", "No scores yet."
    fingerprint = scores_table(session["scores"]).attrs.get("fingerprint", "")
    done = [j for j in settings.store().jobs() if j["kind"] == "study" and j["status"] == "done"
            and j["result"].get("scores_fingerprint") == fingerprint]
    if done:
        study = pd.read_csv(done[-1]["result"]["study"])
        return study, done[-1]["result"]["metric"], "Accuracy vs compression for these scores."
    return None, "", line if session["study_job"] else "No study for these scores yet: press **Run study**."


def compare(specs: list[str], evaluation: str, n: int, settings: Settings, progress=None) -> pd.DataFrame:
    """One row per model: zero-shot metrics, params, GFLOPs and measured latency, side by side."""
    if not specs:
        raise mope.MopeError("pick one to three models to compare")
    if len(specs) > 3:
        raise mope.MopeError("compare at most three models at a time")
    data, kind = EVALUATION[evaluation]
    task = mope.load_task(data, kind=kind, n=int(n))
    rows = []
    for i, spec in enumerate(specs):
        if progress:
            progress(i / len(specs), f"evaluating {spec}")
        clip = get_model(spec, settings)
        headline, card = model_card(spec, settings)
        metrics = mope.evaluate(clip, task)
        shown = {k: round(metrics[k], 4) for k in SHOWN_METRICS[kind]}
        rows.append({"model": _short(spec), "params (M)": round(card["params (M)"].sum(), 3),
                     "vision GFLOPs": card.loc[0, "GFLOPs / sample"], "text GFLOPs": card.loc[1, "GFLOPs / sample"],
                     "image latency (ms)": card.loc[0, "latency, batch 1 (ms)"], **shown})
    return pd.DataFrame(rows)


def _short(spec: str) -> str:
    p = Path(spec)
    return f"{p.parent.name}/{p.name}" if len(p.parts) > 2 else spec


def open_upload(path: str | Path) -> Image.Image:
    """An uploaded image as RGB; a clear error for non-images and for images too large to decode safely."""
    name = Path(path).name
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise mope.MopeError(f"{name} is {im.width}×{im.height} pixels, over the {MAX_PIXELS // 10**6} "
                                     "megapixel limit; resize it first")
            return im.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
        reason = "is too large to decode safely" if isinstance(e, Image.DecompressionBombError) else "is not an image"
        raise mope.MopeError(f"{name} {reason}; upload PNG or JPEG files") from None


def parse_labels(text: str) -> list[str]:
    labels = list(dict.fromkeys(s.strip() for s in (text or "").replace("\n", ",").split(",") if s.strip()))
    if not labels:
        raise mope.MopeError("type at least one label (comma-separated), e.g. red circle, blue square")
    return labels


def predictions(specs: list[str], files: list[str], labels_text: str, k: int, settings: Settings) -> pd.DataFrame:
    """Top-k labels with probabilities for each image (rows) and model (columns)."""
    if not specs:
        raise mope.MopeError("pick at least one model to compare")
    if not files:
        raise mope.MopeError("upload images or press 'Use sample images'")
    labels = parse_labels(labels_text)
    images = [open_upload(f) for f in files]
    table = pd.DataFrame({"image": [Path(f).name for f in files]})
    for spec in specs[:3]:
        probs = label_probabilities(get_model(spec, settings), images, labels)
        top = probs.topk(min(int(k), len(labels)), dim=1)
        table[_short(spec)] = [", ".join(f"{labels[j]} {p:.0%}" for p, j in zip(ps.tolist(), js.tolist()))
                               for ps, js in zip(top.values, top.indices)]
    return table


def sample_images(settings: Settings, n: int = 6) -> tuple[list[str], str]:
    """(paths, labels): a few shapes-world images written once as PNGs, and labels that include their classes."""
    batch = shapes.sample(n, seed=4242, image_size=192, captions_per_image=1)
    paths = [settings.home / "samples" / f"shape-{i}.png" for i in range(n)]
    for p, im in zip(paths, batch.images):
        if not p.is_file():
            atomic_write(p, lambda tmp, im=im: Image.fromarray(im.numpy()).save(tmp, format="PNG"))
    names = [f"{c} {s}" for c, s in zip(batch.names("colour"), batch.names("shape"))]
    distractors = ["purple hexagon", "orange ring", "cyan cross"]
    return [str(p) for p in paths], ", ".join(dict.fromkeys(names + distractors))
