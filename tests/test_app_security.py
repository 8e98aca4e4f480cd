"""Nothing a browser sends reaches a file outside the allowed folders: every named API endpoint of the served app
and every handler behind it, with crafted values (paths outside, traversal, symlinks, globs, forged sessions).

An audit hook (sys.addaudithook) records every file opened, folder listed and file written, moved or removed
anywhere in this process (the served app runs in its threads); the tests assert none of them lies outside.
"""
import glob
import os
import secrets
import shutil
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
from gradio.utils import get_upload_folder
from PIL import Image

import mope
from app.handlers import compare as hc
from app.handlers import model as hm
from app.handlers import prune as hp
from app.handlers import scores as hs
from app.security import allowed_path, check_spec, check_training_data, unpack_zip
from app.session import NEW_SESSION
from app.state import AppState

CANARY = "CANARY-7d1f"  # written into every file outside; no answer may ever contain it
WATCHED_EVENTS = {"open", "os.listdir", "os.scandir", "os.mkdir", "os.rename", "os.remove", "os.rmdir",
                  "shutil.rmtree", "shutil.copyfile", "shutil.make_archive", "os.chmod", "os.truncate", "os.link",
                  "os.symlink", "os.utime"}
_watch = {"roots": (), "seen": [], "busy": threading.local()}


def _audit(event, args):
    if event not in WATCHED_EVENTS or not _watch["roots"] or getattr(_watch["busy"], "on", False):
        return
    _watch["busy"].on = True
    try:
        for arg in args:
            if isinstance(arg, (str, bytes, os.PathLike)):
                real = os.path.realpath(os.fsdecode(arg))
                if any(real == r or real.startswith(r + os.sep) for r in _watch["roots"]):
                    _watch["seen"].append((event, real))
    except (TypeError, ValueError):
        pass
    finally:
        _watch["busy"].on = False


sys.addaudithook(_audit)  # for the whole test process; it records only while a test watches


@pytest.fixture
def watch():
    """Watch the given folders: returns the list of (event, path) touching them (empty = nothing touched)."""
    def start(*roots):
        _watch["roots"] = tuple(os.path.realpath(r) for r in roots)
        _watch["seen"].clear()
        return _watch["seen"]
    yield start
    _watch["roots"] = ()


def _png(path: Path, size=(8, 8), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)
    return path


def _zip(path: Path, members: dict[str, Path | bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, content in members.items():
            z.write(content, name) if isinstance(content, Path) else z.writestr(name, content)
    return path


@pytest.fixture
def world(tmp_path, monkeypatch, tiny_dir):
    """An app state, and beside it an `outside` folder full of tempting, valid files (each holding CANARY) that
    the allowed folders link to through symlinks, traversal and listing files."""
    monkeypatch.setenv("MOPE_HOME", str(tmp_path / "home"))
    out, data, models, uploads = (tmp_path / n for n in ("outside", "data", "models", "uploads"))
    shutil.copytree(tiny_dir, out / "model")
    (out / "model" / "pruning.json").write_text('{"note": "%s"}' % CANARY)
    (out / "scores.csv").write_text(f"unit,mope\n{CANARY},1\n")
    (out / "secret.txt").write_text(CANARY)
    for cls in ("cat", "dog"):
        _png(out / "images" / cls / "x.png")
    (out / "pairs.csv").write_text(f"image,caption\n{out}/images/cat/x.png,{CANARY}\n")
    with tarfile.open(out / "shard-0.tar", "w") as t:
        t.add(out / "images" / "cat" / "x.png", "0.png")
    _zip(out / "images.zip", {"a/cat/x.png": out / "images" / "cat" / "x.png"})
    shutil.copytree(tiny_dir, models / "tiny")
    (models / "escape").symlink_to(out / "model")
    for name in ("cat", "dog"):
        _png(data / "good" / name / "x.png")
    (data / "link_out").symlink_to(out)
    (data / "with_link" / "cat").mkdir(parents=True)
    (data / "with_link" / "cat" / "x.png").symlink_to(out / "images" / "cat" / "x.png")
    (data / "pairs-out.csv").write_text(f"image,caption\n../outside/images/cat/x.png,a\n{out}/images/dog/x.png,b\n")
    (tmp_path / "home" / "models").mkdir(parents=True)
    (tmp_path / "home" / "models" / "linked").symlink_to(out / "model")
    uploads.mkdir()
    state = AppState(model_dirs=[models], data_dirs=[data], upload_dirs=[uploads, get_upload_folder()],
                     start_worker=False)
    return state, out, data, models, uploads


def _snapshot(folder: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


SPECS_OUTSIDE = ["{out}/model", "local-dir:{out}/model", "ViT-B-32:{out}/model/open_clip_model.safetensors",
                 "{models}/escape", "{models}/../outside/model", "local-dir:{models}/escape", "{out}/nonexistent",
                 "../../{out}/model", "model", "/etc"]


def _specs(out, models):
    return [s.format(out=out, models=models) for s in SPECS_OUTSIDE]


def test_checks_refuse_every_way_out_with_one_message(world, watch):
    state, out, data, models, _ = world
    seen = watch(out)
    for spec in _specs(out, models):
        with pytest.raises(mope.MopeError, match="outside the model folders") as e:
            check_spec(spec, state)
        assert CANARY not in str(e.value)
    for spec in (f"pairs:{out}/pairs.csv", f"pairs:{data}/pairs-out.csv", f"wds:{data}/link_ou*/shard-*.tar",
                 f"wds:{data}/link_out/*.tar", f"wds:{out}/*.tar", f"wds:{data}/../outside/shard-*.tar",
                 f"wds:{data}/*/*.tar"):
        with pytest.raises(mope.MopeError, match="outside the data folders"):
            check_training_data(spec, state)
    # whether an outside path exists is not told: the message is the same but for the path typed
    messages = []
    for path in (out / "secret.txt", out / "no-such-file"):
        with pytest.raises(mope.MopeError) as e:
            allowed_path(path, state.data_dirs, "data")
        messages.append(str(e.value).replace(str(path), "PATH"))
    assert messages[0] == messages[1]
    assert seen == [], seen
    assert check_spec(f"{models}/tiny", state) and check_training_data(f"wds:{data}/good/*.tar", state)
    glob.glob(f"{data}/link_ou*/*.tar")  # what a plain glob does: the watch sees it list the outside folder
    assert ("os.scandir", os.path.realpath(out)) in seen


def test_a_tampered_server_session_is_checked_where_it_is_used(world, watch):
    """Even a session on the server naming outside paths (say, an old one from before a folder was dropped from
    the allowed list) reads nothing outside: every path is checked where it is used."""
    state, out, data, models, _ = world
    before = _snapshot(out)
    seen = watch(out)
    bad = {**NEW_SESSION, "spec": f"{out}/model", "scores": str(out / "scores.csv")}
    traversal = {**NEW_SESSION, "scores": f"{state.home}/results/../../outside/scores.csv"}
    for call in (lambda: hs.scores_state(bad, state), lambda: hc.start_study(bad, state),
                 lambda: hs.scores_state(traversal, state),
                 lambda: hp.start_prune_distill(bad, hp.budget_of("keep fraction", 0.5, 1, "uniform", "params", 0, 0,
                                                                  0, 0, 0, 0), "mope", "cpu", 2, 8, "shapes", "x",
                                                state),
                 lambda: hc.study_table(bad, state), lambda: hm.model_card(bad["spec"], state)):
        with pytest.raises(mope.MopeError, match="outside the") as e:
            call()
        assert CANARY not in str(e.value)
    for folder in _saved_outside(state, out):
        for handler in (hp.model_zip, hp.model_card, hp.start_export, hp.export_status):
            with pytest.raises(mope.MopeError, match="outside the model folders"):
                handler(folder, state)
    assert seen == [] and _snapshot(out) == before and state.store().jobs() == []


def _saved_outside(state, out) -> list[str]:
    """Folders a crafted 'saved model' value could name: outside, a symlink in HOME/models, a traversal."""
    return [str(out / "model"), str(state.home / "models" / "linked"), f"{state.home}/models/../../outside/model"]


def test_forged_session_ids_get_a_fresh_empty_session(tmp_path):
    store = AppState(tmp_path / "home", upload_dirs=[]).sessions
    sid, session = store.open(None)
    store.save(sid, {**session, "spec": "x"}, session)
    assert store.open(sid) == (sid, {**NEW_SESSION, "spec": "x"})
    for forged in (secrets.token_urlsafe(32), sid[:-1] + ("A" if sid[-1] != "A" else "B"), "../../etc/passwd",
                   {"spec": "/etc", "scores": "/etc/passwd"}, ["x"], 42, None, "", sid + "x", "session:" + sid):
        new, fresh = store.open(forged)
        assert new != forged and new != sid and len(new) == 43 and fresh == NEW_SESSION


def test_every_endpoint_of_the_served_app_with_crafted_values(world, watch):
    """Each named endpoint, through gradio_client, with forged sessions and paths leading outside."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from app.ui import build

    state, out, data, models, uploads = world
    before = _snapshot(out)
    results = state.home / "results"
    results.mkdir(parents=True)
    (results / "scores-fake.csv").write_text("unit\n")  # where the app keeps scores (never read here)
    sid, empty = state.sessions.open(None)
    state.sessions.save(sid, {**empty, "scores": str(results / "scores-fake.csv")}, empty)
    budget = ["keep fraction", 0.5, 1.0, "uniform", "params", 0, 0, 0, 0, 0, 0]
    forged = [secrets.token_urlsafe(32), {"spec": f"{out}/model", "scores": str(out / "scores.csv"),
                                          "score_job": "x", "pd_job": "y"}, "../../outside/secret.txt"]
    demo = build(state)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    seen = watch(out)
    errors = []

    def refused(*args, api_name):
        with pytest.raises(AppError) as e:
            client.predict(*args, api_name=api_name)
        errors.append(str(e.value))
        return str(e.value)

    try:
        client = Client(demo.local_url, verbose=False)
        for session in forged:  # a forged session is a fresh, empty one under a new id
            new, status, *_ = client.predict(session, "mope", "magnitude", api_name="/draw_scores")
            assert new != session and "No scores yet" in status
            assert "Compute scores" in client.predict(session, "mope", *budget, api_name="/draw_plan")[1]
            assert "compute MoPE scores first" in refused(session, "mope", "cpu", 2, 8, "shapes", "x", *budget, 2,
                                                          "even", api_name="/prune_and_distill")
            assert "compute MoPE scores first" in refused(session, "mope", *budget, api_name="/plan_stability")
        for spec in _specs(out, models)[:6]:
            new, headline, _ = client.predict(forged[0], spec, api_name="/load_model")
            assert "Could not load" in headline and "outside the model folders" in headline and new != forged[0]
            assert "outside the model folders" in refused([spec], "shapes: colour × shape (held out)", 10,
                                                          api_name="/compare")
        source = "server folder"
        for folder in (out / "images", data / "link_out" / "images", data / "with_link", f"{data}/../outside/images"):
            assert "outside the data folders" in refused(sid, source, None, str(folder), "", 8, ["vision"],
                                                         api_name="/start_scores")
        upload = {"path": str(out / "images.zip"), "meta": {"_type": "gradio.FileData"}, "orig_name": "a.zip"}
        errors.append(_raw_call(demo.local_url, "start_scores", [sid, "uploaded zip of an image folder", upload,
                                                                "", "", 8, ["vision"]]))
        assert errors[-1].startswith("event: error")
        for pairs in (f"pairs:{out}/pairs.csv", f"pairs:{data}/pairs-out.csv", f"wds:{data}/link_ou*/shard-*.tar",
                      f"wds:{out}/*.tar", f"wds:{data}/../outside/*.tar"):
            assert "outside the data folders" in refused(sid, "mope", "cpu", 2, 8, pairs, "x", *budget, 1, "even",
                                                         api_name="/prune_and_distill")
        for folder in _saved_outside(state, out):  # Gradio refuses a value not in the list; the handler too
            for api_name in ("/zip_model", "/export_onnx", "/saved_card"):
                refused(folder, api_name=api_name)
        image = _png(uploads / "mine.png")
        secret = {"path": str(out / "images" / "cat" / "x.png"), "meta": {"_type": "gradio.FileData"}}
        errors.append(_raw_call(demo.local_url, "predict", [["demo"], [secret], "cat", 1]))
        assert errors[-1].startswith("event: error")
        assert "outside the model folders" in refused([f"{out}/model"], [handle_file(str(image))], "cat", 1,
                                                      api_name="/predict")
    finally:
        demo.close()
    assert seen == [], seen  # nothing outside opened, listed, written, moved or removed
    assert _snapshot(out) == before and not any(CANARY in e for e in errors)
    assert state.store().jobs() == [] and not list((state.home / "models").glob("x-*"))
    assert not (state.home / "downloads").exists() or not any((state.home / "downloads").iterdir())


def _raw_call(url: str, api_name: str, data: list) -> str:
    """An API call as a crafted client would send it (gradio_client would upload a local file named in a
    FileData itself; this sends the server path as it is). Returns the event stream's text."""
    import httpx

    event = httpx.post(f"{url}gradio_api/call/{api_name}", json={"data": data}, timeout=60).json()["event_id"]
    return httpx.get(f"{url}gradio_api/call/{api_name}/{event}", timeout=120).text


# --- uploads ---------------------------------------------------------------------------------------------

@pytest.fixture
def uploads(tmp_path, monkeypatch):
    monkeypatch.setenv("MOPE_HOME", str(tmp_path / "home"))
    return AppState(upload_dirs=[tmp_path / "up"], start_worker=False), tmp_path / "up"


def _left_over(state: AppState) -> list[str]:
    folder = state.home / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_every_image_in_a_zip_obeys_the_pixel_limit_before_decoding(uploads, monkeypatch):
    state, up = uploads
    huge = _png(up / "huge.png", (12000, 12000), mode="1")  # 144 MP, a few hundred KB of PNG
    archive = _zip(up / "bomb.zip", {"set/cat/huge.png": huge, "set/dog/ok.png": _png(up / "ok.png")})
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self, *a: decoded.append(self.size))
    with pytest.raises(mope.MopeError, match="megapixel limit"):
        unpack_zip(archive, state)
    assert decoded == [] and _left_over(state) == [] and not archive.exists()  # nothing kept, nothing decoded


def test_rejected_uploads_leave_nothing_behind(uploads):
    state, up = uploads
    good = _png(up / "g.png")
    cases = {"slip.zip": ({"cat/a.png": good, "../../evil.png": good}, "unsafe path"),
             "fake.zip": ({"cat/a.png": good, "cat/b.png": b"not an image at all"}, "not a readable image"),
             "none.zip": ({"notes.txt": b"hello"}, "holds no images")}
    for name, (members, message) in cases.items():
        with pytest.raises(mope.MopeError, match=message):
            unpack_zip(_zip(up / name, members), state)
        assert _left_over(state) == [], name  # no <hash> folder, no .partial folder
    flat = _zip(up / "flat.zip", {"a.png": good, "b.png": good})  # images, but no class sub-folders
    with pytest.raises(mope.MopeError, match="class sub-folders"):
        hs.load_calibration("uploaded zip of an image folder", str(flat), None, 8, state)
    assert _left_over(state) == [] and not flat.exists()  # the unpacked folder and the uploaded zip


def test_total_upload_storage_has_a_quota(uploads):
    state, up = uploads
    good = _png(up / "g.png", (64, 64))
    first = unpack_zip(_zip(up / "one.zip", {"cat/a.png": good, "dog/b.png": good}), state)
    assert mope.load_task(f"folder:{first}").classnames == ["cat", "dog"]
    state.upload_quota = sum(p.stat().st_size for p in (state.home / "uploads").rglob("*") if p.is_file()) + 10
    with pytest.raises(mope.MopeError, match="MB allowed; ask whoever runs the app to delete old uploads"):
        unpack_zip(_zip(up / "two.zip", {"cat/c.png": good, "dog/d.png": good, "dog/e.png": good}), state)
    assert _left_over(state) == [first.name]


@pytest.mark.parametrize("what, option", [("data", "--data DIR"), ("model", "--models DIR")])
def test_a_refusal_names_the_apps_real_option(tmp_path, what, option):
    """Issue 11, item 9: the data-folder refusal said `--datas DIR`; the hint names an option `python -m app` has."""
    import subprocess

    usage = subprocess.run([sys.executable, "-m", "app", "--help"], capture_output=True, text=True, timeout=60,
                           cwd=Path(__file__).resolve().parents[1]).stdout
    with pytest.raises(mope.MopeError) as e:
        allowed_path(tmp_path / "outside", [tmp_path / "allowed"], what)
    assert f"start the app with {option} " in str(e.value) and f"[{option}]" in usage
