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


# Every toast message as it appears (time, text). Gradio 6 groups the messages of one type into one toast
# ("Info (2)"), so each message is recorded, not each toast: the walk checks that no event shows one twice.
TOAST_RECORDER = """
window.__toasts = [];
new MutationObserver((records) => {
  for (const record of records) for (const node of record.addedNodes) {
    if (!(node instanceof Element)) continue;
    const texts = node.matches('[data-testid="toast-text"]') ? [node]
      : [...node.querySelectorAll('[data-testid="toast-text"]')];
    for (const text of texts) window.__toasts.push([Date.now(), text.innerText.trim()]);
  }
}).observe(document, {childList: true, subtree: true});
"""


def test_demo_flow_in_chromium(served):
    """One walk through every tab: scores, a head's attention in the original and the pruned model, a plan with its
    tie note, a distilled model, comparison with provenance, per-class accuracy, probability bars, the sketchpad,
    PNG and CSV downloads, next-step lines; no console warning about endpoint arguments, no toast shown twice."""
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        console, toasts = [], []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        page.add_init_script(TOAST_RECORDER)
        page.goto(served)
        _model_tab(page)
        _scores_tab(page, browser, served)
        _prune_tab(page)
        toasts += page.evaluate("window.__toasts")  # this page's; the reload starts a new list
        page.reload()  # the browser keeps this person's session: scores, settings, the saved model
        _after_reload(page)
        _attention(page)
        _compare_tab(page)
        _error_message(page)
        toasts += page.evaluate("window.__toasts")
        browser.close()
    assert not [m for m in console if "Too many arguments" in m], console  # every event gets what it asks for
    assert not _shown_twice(toasts), toasts


def _shown_twice(toasts: list) -> list:
    """Toasts whose text appeared again within 10 s of the same text (one event showing it twice)."""
    seen, twice = {}, []
    for at, text in sorted(toasts):
        if text in seen and at - seen[text] < 10_000:
            twice.append(text)
        seen[text] = at
    return twice


def _download(page, button: str, suffix: str) -> bytes:
    """Click a download button; the file the browser receives (one click, named *suffix)."""
    with page.expect_download(timeout=90_000) as download:  # a PNG renders in a headless Chrome: seconds
        page.locator(button).click()
    assert download.value.suggested_filename.endswith(suffix), download.value.suggested_filename
    return Path(download.value.path()).read_bytes()


def _model_tab(page):
    from playwright.sync_api import expect

    expect(page.locator("#model-card")).to_contain_text("vision", timeout=120_000)  # a shared 2-core machine
    expect(page.locator("#model-headline")).to_contain_text("demo")
    expect(page.locator("#model-headline")).to_contain_text("Origin: original")
    expect(page.locator("#next-model")).to_contain_text("Next step")
    page.screenshot(path=ARTIFACTS / "1-model.png", full_page=True)


def _scores_tab(page, browser, served):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="2 · Scores").click()
    page.locator("#calibration-n input").fill("32")
    page.locator("#compute-scores").click()
    expect(page.locator("#score-status")).to_contain_text(re.compile("queued|Job|units scored"), timeout=60_000)
    expect(page.locator("#score-status")).not_to_contain_text("waiting for the worker")  # it says what it waits for
    expect(page.locator("#score-status")).to_contain_text("units scored", timeout=240_000)
    expect(page.locator("#score-status")).to_contain_text("32 images")
    expect(page.locator("#heatmap .js-plotly-plot")).to_be_visible()
    expect(page.locator("#heatmap")).to_contain_text("attention heads")
    expect(page.locator("#next-scores")).to_contain_text("Next step")
    assert _download(page, "#heatmap-png", ".png").startswith(b"\x89PNG")
    assert _download(page, "#scores-csv", ".csv").startswith(b"tower,kind,layer,index,unit,mope")
    page.screenshot(path=ARTIFACTS / "2-scores.png", full_page=True)
    other = browser.new_context().new_page()  # another person: their own, empty selections
    other.goto(served)
    other.get_by_role("tab", name="2 · Scores").click()
    expect(other.locator("#score-status")).to_contain_text("No scores yet", timeout=30_000)
    other.close()


def _prune_tab(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="3 · Prune & distill").click()
    expect(page.locator("#plan-table")).to_contain_text("vision", timeout=30_000)
    expect(page.locator("#plan-heatmap .js-plotly-plot")).to_be_visible()
    expect(page.locator("#plan-notes")).to_contain_text("ties")  # acc1 on 32 images: many units score exactly 0
    assert _download(page, "#plan-csv", ".csv").startswith(b"tower,")
    for box, value in (("#pd-steps", "2"), ("#pd-batch", "8")):
        page.locator(f"{box} input").fill(value)
        page.locator(f"{box} input").press("Enter")
    page.locator("#prune-distill").click()
    expect(page.locator("#pd-status")).to_contain_text("Saved", timeout=480_000)  # evals of 500 images, shared CPU
    expect(page.locator("#loss-plot")).to_contain_text("affinity")
    expect(page.locator("#loss-plot")).to_contain_text("acc1: teacher")
    expect(page.locator("#next-prune")).to_contain_text("Next step")
    assert _download(page, "#loss-plot-png", ".png").startswith(b"\x89PNG")
    page.screenshot(path=ARTIFACTS / "3-prune.png", full_page=True)


def _after_reload(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="3 · Prune & distill").click()
    expect(page.locator("#pd-steps input")).to_have_value("2", timeout=30_000)
    expect(page.locator("#pd-batch input")).to_have_value("8")
    page.get_by_role("tab", name="2 · Scores").click()
    expect(page.locator("#score-status")).to_contain_text("units scored", timeout=30_000)
    expect(page.locator("#calibration-n input")).to_have_value("32")
    expect(page.locator("#heatmap .js-plotly-plot")).to_be_visible(timeout=30_000)


def _attention(page):
    """Click a head on the vision heatmap: its maps in the original and the saved pruned model side by side."""
    from playwright.sync_api import expect

    page.locator("#heatmap .nsewdrag").first.click()  # a cell of the vision heads heatmap: opens the panel
    expect(page.locator("#attn-head textarea, #attn-head input").first).to_have_value(
        re.compile(r"vision\.L\d\.head\d"), timeout=30_000)
    expect(page.locator("#attn-other input")).to_have_value(re.compile("pruned-"), timeout=30_000)  # the saved model
    page.get_by_role("button", name="Use a sample image").click()
    expect(page.locator("#attn-plot")).to_contain_text("original vs pruned", timeout=60_000)
    expect(page.locator("#attn-plot")).to_contain_text("class token")
    page.locator("#attention-panel").screenshot(path=ARTIFACTS / "2b-attention.png")


def _compare_tab(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="4 · Compare").click()
    expect(page.locator("#compare-origins")).to_contain_text("original", timeout=30_000)
    page.locator("#compare-models input").click()
    page.locator("#compare-models [role=option]").filter(has_text="pruned-").first.click()
    expect(page.locator("#compare-origins")).to_contain_text("distilled 2 steps", timeout=30_000)  # provenance
    page.locator("#compare-n input").fill("100")
    page.locator("#run-compare").click()
    expect(page.locator("#comparison")).to_contain_text("acc1", timeout=180_000)
    expect(page.locator("#comparison")).to_contain_text("demo")
    expect(page.locator("#latency-note")).to_contain_text("back to back", timeout=180_000)  # timed after the table
    expect(page.locator("#per-class-plot")).to_contain_text("Accuracy per class", timeout=180_000)
    assert _download(page, "#per-class-csv", ".csv").startswith(b"class,")
    page.locator("#sketchpad button[aria-label='Brush']").click()
    for y in (0.3, 0.5, 0.7):  # strokes before any label is typed: the note is in the plot (once), not a toast each
        _stroke(page, [(0.4, y), (0.6, y)])
    expect(page.locator("#sketch-bars")).to_contain_text("type at least one label", timeout=60_000)
    page.get_by_role("button", name="Add sample images").click()
    expect(page.locator("#gallery img").first).to_be_visible(timeout=30_000)
    page.locator("#predict").click()
    expect(page.locator("#predictions")).to_contain_text(re.compile(r"\d+%"), timeout=60_000)
    expect(page.locator("#probability-bars")).to_contain_text("forced choice")
    _stroke(page, [(0.4, 0.3), (0.6, 0.3), (0.6, 0.7), (0.4, 0.7), (0.4, 0.3)])  # a square
    expect(page.locator("#sketch-bars")).to_contain_text("demo", timeout=60_000)
    expect(page.locator("#sketch-bars")).to_contain_text("pruned")
    expect(page.locator("#next-compare")).to_contain_text("Next step")
    page.screenshot(path=ARTIFACTS / "4-compare.png", full_page=True)


def _stroke(page, points):
    """One stroke on the sketchpad through `points` (fractions of the canvas), the brush already picked."""
    box = page.locator("#sketchpad canvas").first.bounding_box()
    at = [(box["x"] + box["width"] * x, box["y"] + box["height"] * y) for x, y in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for x, y in at[1:]:
        page.mouse.move(x, y, steps=5)
    page.mouse.up()
    page.wait_for_timeout(1500)  # each stroke is its own change event


def _error_message(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="1 · Model").click()
    page.locator("#model-spec input").fill("/etc")
    page.get_by_role("button", name="Load").click()
    expect(page.locator("#model-headline")).to_contain_text("outside the model folder", timeout=30_000)
    page.screenshot(path=ARTIFACTS / "5-error.png", full_page=True)
    expect(page.locator("#model-card")).to_be_visible()  # the card of the model in use stays
    expect(page.locator("#model-card")).to_contain_text("vision")
