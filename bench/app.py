"""How fast the app feels: start-up to an interactive page, the budget-slider preview, the demo's full MoPE sweep.

1. `python -m app` started with an empty MOPE_HOME: seconds until it prints "ready", and (when Playwright
   and Chromium are installed) until headless Chromium shows the model card.
2. The budget preview (plan + before/after table + heatmap figure) for 19 slider positions on the
   demo's scores: median in-process time, and median round trip through the served app's HTTP API.
3. The app's default scoring sweep on the demo model (both towers, heads + neuron groups + layers,
   256 calibration images, acc1, with the baselines), uncached.

    python bench/app.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python bench/...

import os
import socket
import statistics
import subprocess
import tempfile
import time

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def startup(home: Path) -> tuple[float, float | None, str, subprocess.Popen]:
    """(seconds to 'ready', seconds to the model card in Chromium or None, url, the app's process, still running)."""
    port = free_port()
    log = home / "app.log"
    start = time.perf_counter()
    app = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port)], cwd=ROOT, stdout=open(log, "w"),
                           stderr=subprocess.STDOUT, env={**os.environ, "MOPE_HOME": str(home)})
    while "ready at" not in log.read_text():
        time.sleep(0.05)
    ready = time.perf_counter() - start
    url = f"http://127.0.0.1:{port}/"
    return ready, card_seconds(url, start), url, app


def card_seconds(url: str, start: float) -> float | None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        page.goto(url)
        page.locator("#model-card").filter(has_text="vision").wait_for(timeout=60_000)
        seconds = time.perf_counter() - start
        browser.close()
    return seconds


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="mope-bench-app-"))
    os.environ["MOPE_HOME"] = str(home)
    ready, card, url, app = startup(home)
    print(f"start-up: 'ready' after {ready:.1f} s; model card visible in Chromium after "
          + (f"{card:.1f} s" if card is not None else "(playwright not installed)"), flush=True)
    for line in (home / "app.log").read_text().splitlines():  # the app's own account of where the time went
        if "after start" in line:
            print(f"  app log: {line.split(' app ', 1)[-1].strip()}", flush=True)
    from mope.jobs import Store

    workers = Store(home / "jobs").live_workers()
    print(f"job worker when the page was up: {'warm (pid ' + str(workers[0]) + ')' if workers else 'not started'}",
          flush=True)

    import mope
    from app import figures
    from app.handlers import prune as hp
    from app.handlers import scores as hs
    from app.state import AppState
    from mope.scoring import save_scores, score

    clip = mope.load_model("demo", device="cpu")
    calibration = mope.load_task("shapes:seed=2000", n=256)
    t = time.perf_counter()
    scores = score(clip, calibration, towers=["vision", "text"], units=["head", "neurons", "layer"], metric="acc1",
                   cache=False)
    sweep = time.perf_counter() - t
    print(f"full MoPE sweep (demo, {len(scores)} units, 256 images, acc1, with baselines): {sweep:.1f} s", flush=True)

    path = home / "results" / "scores-bench.csv"  # where the app may read scores from
    save_scores(scores, path)
    state = AppState(home, start_worker=False)
    keeps = []  # every slider position whose plan the app accepts (keep 0.05 / 0.1 remove every vision head)
    for keep in (round(0.05 * i, 2) for i in range(1, 20)):
        try:
            hp.preview(hs.scores_table(str(path), state), hp.budget_of("keep fraction", keep, 1.0, "uniform", "params",
                                                                        0, 0, 0, 0, 0, 0), "mope")
            keeps.append(keep)
        except mope.MopeError as e:
            print(f"keep {keep}: refused ({e})", flush=True)
    local, planning = [], []
    for keep in keeps:
        t = time.perf_counter()
        plan, table, notes = hp.preview(hs.scores_table(str(path), state), hp.budget_of(
            "keep fraction", keep, 1.0, "uniform", "params", 0, 0, 0, 0, 0, 0), "mope")
        planning.append(time.perf_counter() - t)
        figures.heatmaps(hs.scores_table(str(path), state), "mope", removed={u.name for u in plan.removed}).to_json()
        local.append(time.perf_counter() - t)

    from gradio_client import Client

    client = Client(url, verbose=False)
    session, before = state.sessions.open(None)  # the app's session store: a session whose scores are these
    state.sessions.save(session, {**before, "scores": str(path)}, before)
    remote = []
    for keep in keeps:
        t = time.perf_counter()
        client.predict(session, "mope", "keep fraction", keep, 1.0, "uniform", "params", 0, 0, 0, 0, 0, 0,
                       api_name="/draw_plan")
        remote.append(time.perf_counter() - t)
    print(f"budget preview, {len(keeps)} slider positions: in-process median {statistics.median(local) * 1e3:.0f} ms "
          f"(max {max(local) * 1e3:.0f}; of which the plan and its table median {statistics.median(planning) * 1e3:.0f} "
          f"ms); through the served app median {statistics.median(remote) * 1e3:.0f} ms "
          f"(max {max(remote) * 1e3:.0f})", flush=True)
    print("targets: page interactive <= 10 s, preview median <= 150 ms and max <= 300 ms through the served app, "
          "worker warm when the page opens, sweep <= 60 s")
    app.terminate()
    for pid in Store(home / "jobs").live_workers():  # the worker this bench's app started, by its pid
        os.kill(pid, 15)


if __name__ == "__main__":
    main()
