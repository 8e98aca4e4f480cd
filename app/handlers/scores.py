"""Tab 2: calibration data, score jobs (or cached scores at once), and the scores a session is looking at."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

import mope
from mope.anytime import note
from mope.errors import MopeError
from mope.evaluation import metric_names
from mope.runners import latest_round_scores, scores_path
from mope.scoring import (
    baseline_correlations,
    cached_scores,
    load_scores,
    projected_seconds,
    save_scores,
    unit_table,
)

from ..choices import CALIBRATION
from ..security import check_calibration, check_folder, check_scores, remove_upload, unpack_zip
from ..state import AppState
from .jobs import ended_line, job_or_none, progress_line, submit
from .model import get_model


def calibration_spec(source: str, upload: str | None, folder: str | None, state: AppState) -> tuple[str, str]:
    """(data spec, task kind) for a calibration choice; an uploaded zip is unpacked under the uploads folder."""
    if source not in CALIBRATION:
        raise MopeError(f"unknown calibration data '{str(source)[:100]}'; pick one of the list")
    spec, kind = CALIBRATION[source]
    if source.startswith("uploaded"):
        if not upload:
            raise MopeError("upload a .zip of an image folder (one sub-folder per class) first")
        return f"folder:{unpack_zip(upload, state)}", kind
    if source == "server folder":
        if not isinstance(folder, str) or not folder.strip():
            raise MopeError("type a folder path inside the allowed data folders")
        return f"folder:{check_folder(folder.strip(), state)}", kind
    return spec, kind


def metric_choices(source: str) -> list[str]:
    """The metrics the calibration choice can be scored by; "" for its default (acc1 / recall_mean)."""
    return [""] + metric_names(CALIBRATION[source][1])


def load_calibration(source: str, upload: str | None, folder: str | None, n: int,
                     state: AppState) -> tuple[str, mope.Task]:
    """(data spec, task) of a calibration choice; an uploaded data set that cannot be used is deleted, not kept."""
    data, kind = calibration_spec(source, upload, folder, state)
    try:
        return data, mope.load_task(data, protocol=kind, n=int(n))
    except MopeError:
        if source.startswith("uploaded"):
            remove_upload(Path(data.partition(":")[2]), state, upload)
        raise


def start_scores(session: dict, source: str, upload: str | None, folder: str | None, metric: str | None, n: int,
                 towers: list[str], state: AppState) -> tuple[dict, str]:
    """Cached scores at once; otherwise a score job. Returns (session, message)."""
    if not towers:
        raise MopeError("pick at least one tower to score")
    data, task = load_calibration(source, upload, folder, n, state)
    clip = get_model(session["spec"], state)
    metric = metric or None
    kw = {"towers": list(towers), "units": ["head", "neurons", "layer"], "metric": metric}
    settings = {"source": source, "data": task.name, "n": len(task), "towers": list(towers), "metric": metric or "",
                "spec": data, "kind": task.protocol}  # spec and kind (the protocol): what iterative pruning re-scores on
    session = {**session, "score_settings": settings}
    hit = cached_scores(clip, task, **kw)
    if hit is not None:
        path = scores_path(hit.attrs["fingerprint"])
        if not path.exists():
            save_scores(hit, path)
        return {**session, "scores": str(path), "score_job": None}, f"Cached scores for {task.name} — shown at once."
    schedule, why = schedule_for(clip, task, kw)
    budget = {"first_table_seconds": FIRST_TABLE_S} if schedule == "anytime" else {}
    job = submit(state, "score", {"model": session["spec"], "data": data, "task": task.protocol, "n": int(n),
                                  "schedule": schedule, **budget, **kw})
    return {**session, "score_job": job}, f"Scoring started (job {job}): {task.name}, metric {metric or 'default'}{why}."


ANYTIME_AFTER_S = 180  # an exact sweep projected longer than this starts as anytime scoring
FIRST_TABLE_S = 300  # anytime scoring's first table (every unit's first estimate) sized to fit this here


def schedule_for(clip: mope.Clip, task, kw: dict) -> tuple[str, str]:
    """("anytime", why) when the exact sweep would take more than a few minutes here, else ("exact", "")."""
    seconds = projected_seconds(clip, task, kw["towers"], kw["units"])
    if seconds <= ANYTIME_AFTER_S:
        return "exact", ""
    return "anytime", (f"; the exact sweep would take about {seconds / 60:.0f} min here, so every unit gets a first "
                       f"estimate on a few images within about {FIRST_TABLE_S // 60} min, refined in rounds to the exact "
                       "scores (hatched cells: estimates)")


def settings_line(session: dict) -> str:
    """What the session's scores were computed from: calibration data, images, towers."""
    s = session.get("score_settings")
    if not s:
        return ""
    return f" · calibration **{s['data']}**, {s['n']} images, towers {' + '.join(s['towers'])}"


def scores_calibration(session: dict, state: AppState, why: str) -> tuple[str, str | None, int]:
    """(data spec, protocol, images) the session's scores were computed on, the spec checked at this use;
    `why` says what needs them when the session does not know (scores from before it kept them)."""
    settings = session.get("score_settings") or {}
    if not settings.get("spec"):
        raise MopeError(f"{why} re-scores on the scores' calibration data: compute the scores again (tab 2) so the "
                        "app knows which data that was")
    return check_calibration(settings["spec"], state), settings.get("kind"), int(settings["n"])


def scores_table(path: str, state: AppState) -> pd.DataFrame:
    """A scores CSV the app wrote, read once per process (the files never change: named by fingerprint)."""
    checked = check_scores(path, state)
    return state.scores.get(str(checked), lambda: load_scores(checked))


def scores_state(session: dict, state: AppState) -> tuple[dict, pd.DataFrame | None, int | None, str]:
    """(session, the scores so far or final, units in all when still running, status line) — follows the job."""
    job_id = session["score_job"]
    if job_id:
        job = job_or_none(state.store(), job_id)
        if job is None:
            return {**session, "score_job": None}, None, None, f"Job {job_id} is gone from the job store."
        anytime = job["kind"] == "score" and job["params"].get("schedule") == "anytime"
        rounds = latest_round_scores(job_id) if anytime else None  # each round's table: plannable at once
        if rounds is not None:
            session = {**session, "scores": str(rounds)}
        if job["status"] in ("queued", "running"):
            params = job["params"]
            frame = partial_scores(get_model(params["model"], state), params["towers"], params["units"],
                                   job["partial"], state)
            return session, frame, len(frame), progress_line(job, state.store()) + settings_line(session)
        session = {**session, "score_job": None}
        if job["status"] == "done":
            session["scores"] = job["result"]["scores"]
        elif rounds is not None:
            df = scores_or_none(session, state)
            return session, df, None, f"{ended_line(job)} {kept_round_line(df)}"
        else:
            kept = " Any layers it finished are cached: computing the same scores again continues after them."
            return session, scores_or_none(session, state), None, ended_line(job) + (kept if job["kind"] == "score"
                                                                                      else "")
    df = scores_or_none(session, state)
    if df is None:
        return session, None, None, "No scores yet: pick calibration data and press **Compute MoPE scores**."
    return session, df, None, (f"{len(df)} units scored · metric **{df.attrs.get('metric', '?')}**"
                               f"{settings_line(session)} · {Path(session['scores']).name}")


def kept_round_line(df: pd.DataFrame | None) -> str:
    """What a stopped anytime job left: its last round's table, now the session's scores."""
    if df is None:
        return ""
    return (f"The table of its last round is kept as the scores ({note(df) or 'every unit exact'}): plans from it say "
            "so; computing the same scores again continues from it.")


ANYTIME_COLUMNS = ("estimate", "images_used", "se", "round")  # what anytime rows add, for the heatmaps


def partial_scores(clip: mope.Clip, towers: list[str], kinds: list[str], rows: list[dict],
                   state: AppState) -> pd.DataFrame:
    """Every unit of the model with the MoPE scored so far (NaN for the rest), so heatmaps keep their shape.

    The unit table (sizes, baselines, the model's fingerprint) is built once per model and settings, not at
    every timer tick of a running job.
    """
    key = (clip.spec, str(clip.device), tuple(towers), tuple(kinds))
    skeleton = state.skeletons.get(key, lambda: unit_table(clip, towers, kinds))
    columns = ["unit", "mope"] + [c for c in ANYTIME_COLUMNS if rows and c in rows[-1]]
    done = pd.DataFrame(rows, columns=columns) if rows else pd.DataFrame(columns=columns)
    frame = skeleton.merge(done[columns], on="unit", how="left").astype({"mope": float})
    frame.attrs["scored"] = len(done)
    return frame


def scores_or_none(session: dict, state: AppState) -> pd.DataFrame | None:
    """The session's scores table; None when it has none or the file is gone."""
    if not session["scores"]:
        return None
    path = check_scores(session["scores"], state)
    return scores_table(str(path), state) if path.is_file() else None


def correlations(df: pd.DataFrame) -> pd.DataFrame:
    """Spearman ρ of MoPE and each baseline per tower and kind: whole layers get their own ρ too."""
    return baseline_correlations(df).round(3)
