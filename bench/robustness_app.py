"""Issue 11's app cases, against the served app: `python -m app` on 127.0.0.1 (a free port) with a fresh MOPE_HOME,
its own Gradio upload folder, a `--data` and a `--models` folder, driven over HTTP by gradio_client (and plain
httpx where a crafted client would send what gradio_client will not). Used by bench/robustness_cases.py.

Beside the allowed folders lies `outside/`: valid, tempting files (a model, a scores CSV, images, a shard) each
holding CANARY, reached from inside through a symlink; no answer may contain CANARY or a line of /etc/adduser.conf.
A second app runs with `--auth` for the route cases.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CANARY = "CANARY-11c7"
BUDGET = ["keep fraction", 0.5, 1.0, "uniform", "params", 0, 0, 0, 0, 0, 0]  # the prune tab's budget controls
UPLOAD = "uploaded zip of an image folder"
SECRET = Path("/etc/adduser.conf")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `python -m app` process and the folders around it."""

    def __init__(self, root: Path, auth: str | None = None, scores: str | None = None):
        self.root, self.auth = root, auth
        self.home, self.data, self.models, self.out = (root / n for n in ("home", "data", "models", "outside"))
        self.gradio_tmp = root / "gradio-uploads"
        _world(self)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = root / "app.log"
        env = {**os.environ, "MOPE_HOME": str(self.home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
               "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(self.gradio_tmp), "PYTHONPATH": str(ROOT)}
        args = ["--port", str(self.port), "--home", str(self.home), "--data", str(self.data), "--models", str(self.models)]
        self.proc = subprocess.Popen([sys.executable, "-m", "app", *args, *(["--auth", auth] if auth else [])],
                                     cwd=ROOT, env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        self._wait_ready()
        if scores:  # a server-side session holding real scores (as after tab 2), for the cases past "score first"
            results = self.home / "results"
            results.mkdir(parents=True, exist_ok=True)
            shutil.copy(scores, results / "scores-bench.csv")
            from app.session import NEW_SESSION, SessionStore

            store = SessionStore(self.home / "sessions")
            self.sid, empty = store.open(None)
            store.save(self.sid, {**NEW_SESSION, "scores": str(results / "scores-bench.csv")}, empty)
            store.cache.close()

    def _wait_ready(self, timeout: float = 600) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if "ready at" in self.log.read_text():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited: {self.log.read_text()[-500:]}")
            time.sleep(0.5)
        raise RuntimeError("the app did not start in time")

    def client(self):
        from gradio_client import Client

        return Client(self.url, verbose=False)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def jobs(self) -> list[dict]:
        from mope.jobs import Store

        store = Store(self.home / "jobs")
        try:
            return store.jobs()
        finally:
            store.close()

    def leftovers(self) -> list[str]:
        """What an upload left: anything under HOME/uploads, and uploaded files still in Gradio's upload folder."""
        uploads = self.home / "uploads"
        kept = [str(p.relative_to(self.home)) for p in uploads.rglob("*")] if uploads.is_dir() else []
        gradio = [p.name for p in self.gradio_tmp.rglob("*") if p.is_file() and p.suffix == ".zip"]
        return kept + gradio

    def stop(self) -> None:
        marker = self.home / "jobs" / "worker.json"  # the worker the app started on demand
        if marker.exists():
            try:
                os.kill(json.loads(marker.read_text())["pid"], 15)
            except (ProcessLookupError, ValueError, KeyError):
                pass
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Lazy:
    """A Server started on first use (so `--only` runs start only the apps they need); stop() if it was."""

    def __init__(self, make):
        self._make, self._server = make, None

    def __getattr__(self, name):
        if self._server is None:
            self._server = self._make()
        return getattr(self._server, name)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


class Evil:
    """Unpickling it runs `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _world(server: Server) -> None:
    from PIL import Image

    out, data, models = server.out, server.data, server.models
    for cls in ("cat", "dog"):
        (out / "images" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8), (200, 0, 0)).save(out / "images" / cls / "x.png")
        (data / "good" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8), (0, 0, 200)).save(data / "good" / cls / "x.png")
    shutil.copytree(ROOT / "assets" / "demo-clip", out / "model", ignore=shutil.ignore_patterns("*.txt"))
    (out / "model" / "pruning.json").write_text(json.dumps({"note": CANARY}))
    (out / "scores.csv").write_text(f"unit,mope\n{CANARY},1\n")
    with tarfile.open(out / "shard-0.tar", "w") as tar:
        for name, payload in (("s0.png", (out / "images" / "cat" / "x.png").read_bytes()), ("s0.txt", CANARY.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    (data / "link_out").symlink_to(out)
    models.mkdir()
    (models / "escape").symlink_to(out / "model")
    (models / "evil.pt").write_bytes(pickle.dumps({"state_dict": Evil(server.root / "PWNED")}))
    server.gradio_tmp.mkdir()


# --- helpers for the cases ---------------------------------------------------------------------------------

def _call(client, *args, api_name: str) -> tuple[bool, str]:
    """(refused, what came back: the result's text or the error's message)."""
    from gradio_client.exceptions import AppError

    try:
        return False, str(client.predict(*args, api_name=api_name))
    except AppError as e:
        return True, str(e)
    except Exception as e:  # noqa: BLE001 (a route that is not there: gradio_client's own ValueError)
        return True, f"{type(e).__name__}: {e}"


def _leaks(text: str) -> list[str]:
    """The secrets an answer must not hold: CANARY and every non-trivial line of /etc/adduser.conf."""
    lines = [ln.strip() for ln in SECRET.read_text().splitlines() if len(ln.strip()) > 8] if SECRET.exists() else []
    return [s for s in [CANARY, *lines] if s in text]


def _short(text: str) -> str:
    return re.sub(r"\s+", " ", text)[:140]


def _forged(spec: str) -> dict:
    return {"spec": spec, "scores": str(SECRET), "score_job": "x", "pd_job": "y", "study_job": "z"}


# --- session cases (issue item 1) --------------------------------------------------------------------------

def forged_session_job(server: Server, api_name: str, spec: str):
    def check(box, shared):
        client = server.client()
        args = {"/prune_and_distill": ["mope", "cpu", 2, 8, "shapes", "x", *BUDGET, 1, "even"],
                "/start_study": [[]]}[api_name]
        refused, seen = _call(client, _forged(spec), *args, api_name=api_name)
        jobs, leaks = server.jobs(), _leaks(seen)
        ok = refused and not jobs and not leaks and not list((server.home / "models").glob("x*"))
        return ok, f"refused={refused}: {_short(seen)}; jobs made: {len(jobs)}; leaked: {leaks[:1]}"
    return check


def draw_scores_secret(server: Server):
    """A session value naming /etc/adduser.conf, and one naming a path that does not exist: the same answer."""
    def check(box, shared):
        client = server.client()
        answers = []
        for path in (str(SECRET), "/etc/no-such-file-4d2a"):
            refused, seen = _call(client, {"spec": "demo", "scores": path}, "mope", "magnitude", api_name="/draw_scores")
            answers.append(re.sub(r"[A-Za-z0-9_-]{43}", "SID", seen))
        leaks = _leaks(answers[0])
        same = answers[0] == answers[1]
        return (not leaks and same and "No scores yet" in answers[0],
                f"leaked {leaks[:1]}; answers for an existing and a missing path {'identical' if same else 'DIFFER'}; "
                f"{_short(answers[0])[:90]}")
    return check


def load_model_outside(server: Server, spec_of, says: str = "outside the model folders"):
    def check(box, shared):
        spec = spec_of(server)
        refused, seen = _call(server.client(), "", spec, api_name="/load_model")
        ok = says in seen and not _leaks(seen) and not (server.root / "PWNED").exists()
        return ok, _short(seen) + ("; PICKLE RAN" if (server.root / "PWNED").exists() else "")
    return check


def unknown_session_id(server: Server):
    def check(box, shared):
        import secrets

        forged = secrets.token_urlsafe(32)
        refused, seen = _call(server.client(), forged, "mope", "magnitude", api_name="/draw_scores")
        return (not refused and forged not in seen and "No scores yet" in seen,
                f"refused={refused}; a new id given: {forged not in seen}; {_short(seen)[:80]}")
    return check


# --- data and file cases (items 2, 9) ----------------------------------------------------------------------

def training_data_outside(server: Server, data_of):
    def check(box, shared):
        data = data_of(server)
        refused, seen = _call(server.client(), server.sid, "mope", "cpu", 2, 8, data, "x", *BUDGET, 1, "even",
                              api_name="/prune_and_distill")
        jobs = server.jobs()
        return (refused and "outside the data folders" in seen and not jobs and not _leaks(seen),
                f"{_short(seen)}; jobs made: {len(jobs)}")
    return check


def calibration_folder_outside(server: Server, folder_of):
    def check(box, shared):
        refused, seen = _call(server.client(), server.sid, "server folder", None, folder_of(server), "", 8, ["vision"],
                              api_name="/start_scores")
        ok = refused and "outside the data folders" in seen and "--data DIR" in seen and "--datas" not in seen
        return ok and not _leaks(seen) and not server.jobs(), _short(seen)
    return check


def file_outside(server: Server, api_name: str, value_of):
    def check(box, shared):
        refused, seen = _call(server.client(), *value_of(server), api_name=api_name)
        return refused and not _leaks(seen) and not server.jobs(), f"refused={refused}: {_short(seen)}"
    return check


def raw_file_outside(server: Server):
    """/predict with a FileData naming an outside image, sent as a crafted client would (no upload first)."""
    def check(box, shared):
        secret = {"path": str(server.out / "images" / "cat" / "x.png"), "meta": {"_type": "gradio.FileData"}}
        event = httpx.post(f"{server.url}gradio_api/call/predict", json={"data": [["demo"], [secret], "cat", 1]},
                           timeout=60).json()["event_id"]
        text = httpx.get(f"{server.url}gradio_api/call/predict/{event}", timeout=300).text
        return text.startswith("event: error") and not _leaks(text), _short(text)
    return check


# --- upload cases (items 3, 4) -----------------------------------------------------------------------------

def upload_refused(server: Server, make_zip, says: str, watch_memory: bool = False):
    """An uploaded calibration zip must be refused (saying `says`) and leave nothing on disk (HOME/uploads, Gradio's
    upload folder); with watch_memory, the app's resident memory may not grow by more than 300 MB."""
    def check(box, shared):
        from gradio_client import handle_file

        path = make_zip(box.work)
        before = server.rss_mb()
        refused, seen = _call(server.client(), server.sid, UPLOAD, handle_file(str(path)), "", "", 8, ["vision"],
                              api_name="/start_scores")
        grown = server.rss_mb() - before
        left = server.leftovers()
        outside = [p.name for p in [*server.root.rglob("evil*.png"), *Path("/tmp").glob("evil*.png")]]
        ok = refused and says in seen and not left and not outside and not server.jobs()
        ok = ok and (grown < 300 if watch_memory else True)
        return ok, (f"{_short(seen)}; left on disk: {left[:3]}; files named evil*: {outside[:2]}"
                    + (f"; app memory +{grown:.0f} MB" if watch_memory else ""))
    return check


def _zip(folder: Path, name: str, members: dict[str, bytes]) -> Path:
    path = folder / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for member, data in members.items():
            z.writestr(member, data)
    return path


def _png_bytes(size=(8, 8), mode="RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def zip_huge_png(folder: Path) -> Path:
    """The issue's 12000×12000 PNG (a few hundred KB) beside a normal image, in class folders."""
    return _zip(folder, "huge.zip", {"set/cat/huge.png": _png_bytes((12000, 12000), "1"), "set/dog/ok.png": _png_bytes()})


def zip_bomb_rejected_dataset(folder: Path) -> Path:
    """~200 MB of valid BMPs (each under the pixel limit, under the 500 MB cap) that unpack, but are no data set
    (no class sub-folders): the unpacked upload must be deleted."""
    from PIL import Image

    path = folder / "bomb200.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(2):
            buf = io.BytesIO()
            Image.new("RGB", (5800, 5800)).save(buf, format="BMP")  # 101 MB each, 33.6 MP
            z.writestr(f"img{i}.bmp", buf.getvalue())
    return path


def zip_bomb_over_cap(folder: Path) -> Path:
    """600 MB of zeros named like images: refused from the sizes in the zip's directory, before unpacking."""
    path = folder / "bomb600.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(3):
            with z.open(f"cls{i % 2}/img{i}.png", "w", force_zip64=True) as f:
                for _ in range(200):
                    f.write(bytes(2**20))
    return path


def zip_slip(member: str):
    def make(folder: Path) -> Path:
        return _zip(folder, "slip.zip", {"set/cat/ok.png": _png_bytes(), "set/dog/ok.png": _png_bytes(),
                                         member: _png_bytes()})
    return make


def zip_symlink(folder: Path) -> Path:
    path = folder / "link.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("set/cat/ok.png", _png_bytes())
        info = zipfile.ZipInfo("set/dog/evil.png")
        info.external_attr = (0o120777 << 16)  # a symlink member pointing at /etc/adduser.conf
        z.writestr(info, str(SECRET))
    return path


def not_a_zip(folder: Path) -> Path:
    path = folder / "notes.zip"
    path.write_text("not a zip at all")
    return path


# --- the served app's surface ----------------------------------------------------------------------------

def binds_localhost(server: Server):
    def check(box, shared):
        listening = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, port = local.rsplit(":", 1)
                if state == "0A" and int(port, 16) == server.port:
                    listening.append(address)
        ok = listening == ["0100007F"]
        return ok, f"listening addresses on port {server.port}: {listening} (0100007F = 127.0.0.1)"
    return check


AUTH_ROUTES = [
    ("GET", "config", None), ("GET", "gradio_api/info", None),
    ("POST", "gradio_api/call/load_model", {"data": ["", "demo"]}),
    ("POST", "gradio_api/upload", None), ("POST", "gradio_api/queue/join", {"data": [], "fn_index": 0,
                                                                             "session_hash": "x"}),
    ("GET", "gradio_api/file=/etc/adduser.conf", None), ("GET", "gradio_api/queue/data?session_hash=x", None),
]


def auth_route(server: Server, method: str, route: str, body):
    """Without the password a route is refused (401/403, or the login page instead of the app); with it, it opens
    (the check could fail)."""
    def check(box, shared):
        kw = {"json": body} if body is not None else ({"files": {"files": ("a.zip", b"x")}} if "upload" in route else {})
        anonymous = httpx.request(method, server.url + route, timeout=60, **kw)
        refused = anonymous.status_code in (401, 403) and not _leaks(anonymous.text)
        user, password = server.auth.split(":", 1)
        with httpx.Client(base_url=server.url, timeout=60) as logged_in:
            logged_in.post("login", data={"username": user, "password": password})
            opened = logged_in.get("config").status_code == 200
        return refused and opened, (f"without the password: HTTP {anonymous.status_code}; with it, /config "
                                    f"{'opens' if opened else 'REFUSED'}")
    return check


def auth_client(server: Server):
    def check(box, shared):
        try:
            server.client().predict("", "demo", api_name="/load_model")
            return False, "gradio_client reached /load_model without the password"
        except Exception as e:  # noqa: BLE001
            return True, f"gradio_client without the password: {type(e).__name__}: {_short(str(e))[:80]}"
    return check


def cases(server: Server | Lazy, auth: Server | Lazy) -> list[tuple]:
    """(item, name, expected, check(box, shared)) for bench/robustness_cases.py."""
    never = "refused, no job made, nothing outside read (no canary / /etc line in the answer)"
    gone = "refused, nothing left in HOME/uploads nor Gradio's upload folder"
    return [
        ("1", "app /prune_and_distill, forged session {'spec': '/etc', …}", never,
         forged_session_job(server, "/prune_and_distill", "/etc")),
        ("1", "app /prune_and_distill, forged session {'spec': 'local-dir:/etc', …}", never,
         forged_session_job(server, "/prune_and_distill", "local-dir:/etc")),
        ("1", "app /start_study, forged session {'spec': '/etc', …}", "not an API route (private), or " + never,
         forged_session_job(server, "/start_study", "/etc")),
        ("1", "app /start_study, forged session {'spec': 'local-dir:/etc', …}", "not an API route, or " + never,
         forged_session_job(server, "/start_study", "local-dir:/etc")),
        ("1", "app /draw_scores, session scores /etc/adduser.conf vs a missing path",
         "no line of the file, the same answer whether the path exists or not", draw_scores_secret(server)),
        ("1", "app /draw_scores, an unknown well-formed session id", "a fresh, empty session under a new id",
         unknown_session_id(server)),
        ("1", "app /load_model /etc", "refused: outside the model folders", load_model_outside(server, lambda s: "/etc")),
        ("1", "app /load_model local-dir:/etc", "refused: outside the model folders",
         load_model_outside(server, lambda s: "local-dir:/etc")),
        ("1", "app /load_model MODELS/escape (a symlink out)", "refused: outside the model folders",
         load_model_outside(server, lambda s: f"{s.models}/escape")),
        ("1", "app /load_model MODELS/../outside/model (traversal)", "refused: outside the model folders",
         load_model_outside(server, lambda s: f"{s.models}/../outside/model")),
        ("1", "app /compare with a spec outside", never,
         file_outside(server, "/compare", lambda s: ([f"{s.out}/model"], "shapes: colour × shape (held out)", 10))),
        ("1", "app /zip_model with a folder outside", never,
         file_outside(server, "/zip_model", lambda s: (f"{s.out}/model",))),
        ("1", "app /predict with a FileData path outside (crafted request)", "an error event, no canary",
         raw_file_outside(server)),
        ("2", "app /prune_and_distill data wds:DATA/link_ou*/shard-*.tar (glob through a symlink)", never,
         training_data_outside(server, lambda s: f"wds:{s.data}/link_ou*/shard-*.tar")),
        ("2", "app /prune_and_distill data wds:DATA/../outside/*.tar (traversal)", never,
         training_data_outside(server, lambda s: f"wds:{s.data}/../outside/*.tar")),
        ("2", "app /start_scores server folder DATA/link_out/images (a symlink out)", "refused, names --data DIR",
         calibration_folder_outside(server, lambda s: f"{s.data}/link_out/images")),
        ("9", "app /start_scores server folder outside: the hint names --data DIR, not --datas",
         "refused, names --data DIR", calibration_folder_outside(server, lambda s: f"{s.out}/images")),
        ("-", "app /load_model MODELS/evil.pt as ViT-B-32:FILE (a pickle that runs code)",
         "refused, the code never runs", load_model_outside(server, lambda s: f"ViT-B-32:{s.models}/evil.pt",
                                                            "Could not load")),
        ("3", "app /start_scores, a zip holding a 12000×12000 PNG", "refused before decoding (pixel limit), "
         "app memory +< 300 MB, nothing left", upload_refused(server, zip_huge_png, "megapixel limit", watch_memory=True)),
        ("4", "app /start_scores, a 200 MB zip bomb (under the 500 MB cap) that is no data set", gone,
         upload_refused(server, zip_bomb_rejected_dataset, "class sub-folders")),
        ("4", "app /start_scores, a zip unpacking to 600 MB", gone, upload_refused(server, zip_bomb_over_cap, "500 MB")),
        ("4", "app /start_scores, zip-slip ../../evil.png", gone,
         upload_refused(server, zip_slip("../../evil.png"), "unsafe path")),
        ("4", "app /start_scores, zip member with an absolute path", gone,
         upload_refused(server, zip_slip("/tmp/evil-abs.png"), "unsafe path")),
        ("4", "app /start_scores, zip with a symlink member to /etc/adduser.conf", gone,
         upload_refused(server, zip_symlink, "not a readable image")),
        ("4", "app /start_scores, a text file named .zip", gone,
         upload_refused(server, not_a_zip, "not a readable .zip")),
        ("-", "the app listens on 127.0.0.1 only", "one listening socket, 127.0.0.1", binds_localhost(server)),
        *[("-", f"--auth: {method} /{route.split('?')[0]} without the password", "401/403; opens with the password",
           auth_route(auth, method, route, body)) for method, route, body in AUTH_ROUTES],
        ("-", "--auth: gradio_client without the password", "refused", auth_client(auth)),
    ]
