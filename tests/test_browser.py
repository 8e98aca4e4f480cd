"""The demo flow in real headless Chromium (Debian's chromium, driven by Playwright): the served app, a real
job worker, screenshots kept in test-artifacts/. Skipped where no browser is installed, unless
MOPE_REQUIRE_BROWSER=1 (as in CI), where a missing browser fails."""
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _browser_or_skip():
    missing = [what for what, ok in (("playwright", _has_playwright()), ("chromium", Path(CHROMIUM).exists())) if not ok]
    if missing:
        message = f"{' and '.join(missing)} not installed (see .ci/run)"
        if os.environ.get("MOPE_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
        return True
    except ImportError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    """`python -m app` on a free port with its own MOPE_HOME; yields the URL, then stops app and worker."""
    port = _free_port()
    env = {**os.environ, "MOPE_HOME": str(tmp_path / "home"), "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=Path(__file__).resolve().parent.parent)
    deadline = time.time() + 120
    while "ready at" not in (tmp_path / "app.log").read_text():
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "app.log").read_text()
        time.sleep(0.5)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        subprocess.run(["pkill", "-f", f"MOPE_HOME={tmp_path}"], check=False)
        from mope.jobs import Store

        for pid in Store(tmp_path / "home" / "jobs").live_workers():
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass


def test_demo_flow_in_chromium(served):
    _browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(served)
        expect(page.locator("#model-card")).to_contain_text("vision", timeout=120_000)  # torch loads first
        expect(page.locator("#model-headline")).to_contain_text("demo")
        page.screenshot(path=ARTIFACTS / "1-model.png", full_page=True)

        page.get_by_role("tab", name="2 · Scores").click()
        page.locator("#calibration-n input").fill("32")
        page.locator("#compute-scores").click()
        expect(page.locator("#score-status")).to_contain_text("units scored", timeout=240_000)
        expect(page.locator("#heatmap .js-plotly-plot")).to_be_visible()
        expect(page.locator("#heatmap")).to_contain_text("attention heads")
        page.screenshot(path=ARTIFACTS / "2-scores.png", full_page=True)
        page.reload()  # the browser keeps this person's session: the scores come back
        page.get_by_role("tab", name="2 · Scores").click()
        expect(page.locator("#score-status")).to_contain_text("units scored", timeout=30_000)
        expect(page.locator("#heatmap .js-plotly-plot")).to_be_visible(timeout=60_000)  # slow on a busy machine
        other = browser.new_context().new_page()  # another person: their own, empty selections
        other.goto(served)
        other.get_by_role("tab", name="2 · Scores").click()
        expect(other.locator("#score-status")).to_contain_text("No scores yet", timeout=30_000)
        other.close()

        page.get_by_role("tab", name="3 · Prune & distill").click()
        expect(page.locator("#plan-table")).to_contain_text("vision", timeout=30_000)
        expect(page.locator("#plan-heatmap .js-plotly-plot")).to_be_visible()
        page.locator("#pd-steps input").fill("3")
        page.locator("#pd-batch input").fill("8")
        page.locator("#prune-distill").click()
        expect(page.locator("#pd-status")).to_contain_text("Saved", timeout=240_000)
        expect(page.locator("#loss-plot")).to_contain_text("affinity")
        page.screenshot(path=ARTIFACTS / "3-plan.png", full_page=True)

        page.get_by_role("tab", name="4 · Compare").click()
        page.locator("#run-compare").click()
        expect(page.locator("#comparison")).to_contain_text("acc1", timeout=120_000)
        expect(page.locator("#comparison")).to_contain_text("demo")
        page.get_by_role("button", name="Add sample images").click()
        expect(page.locator("#gallery img").first).to_be_visible(timeout=30_000)
        page.locator("#predict").click()
        expect(page.locator("#predictions")).to_contain_text(re.compile(r"\d+%"), timeout=60_000)
        page.screenshot(path=ARTIFACTS / "4-compare.png", full_page=True)

        page.get_by_role("tab", name="1 · Model").click()
        page.locator("#model-spec input").fill("/etc")
        page.get_by_role("button", name="Load").click()
        expect(page.locator("#model-headline")).to_contain_text("outside the model folder", timeout=30_000)
        page.screenshot(path=ARTIFACTS / "5-error.png", full_page=True)
        expect(page.locator("#model-card")).to_be_visible()  # the card of the model in use stays
        expect(page.locator("#model-card")).to_contain_text("vision")
        browser.close()
