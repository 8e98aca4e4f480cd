"""The page: a title, four tabs (app.tabs: model, scores, prune & distill, compare) and what they share.

The browser keeps only an opaque session id (gr.BrowserState, encrypted with a key kept under HOME); the
session itself lives on the server (app.session). A one-second timer lets each tab follow its jobs and
redraw only when a job moved. Nothing here imports torch: the handlers (and with them torch and
open_clip) load at the first event, after the page is served.
"""
from __future__ import annotations

import gradio as gr

from .page import Page
from .session import browser_secret
from .state import AppState
from .tabs import compare, model, prune, scores

TABS = (model, scores, prune, compare)  # wired in this order: a tab may chain on the events of those before it


# A click on a cell of a heads heatmap (tab 2) names that head in the attention panel, which then draws its maps.
HEAD_CLICK_JS = """
() => {
  const pick = (name) => {
    const wrap = document.querySelector('#attention-panel .label-wrap');
    if (wrap && !wrap.classList.contains('open')) wrap.click();
    setTimeout(() => {
      const box = document.querySelector('#attn-head textarea, #attn-head input');
      if (!box) return;
      box.value = name;
      box.dispatchEvent(new Event('input', {bubbles: true}));
    }, 100);
  };
  const bind = () => document.querySelectorAll('#heatmap .js-plotly-plot').forEach((div) => {
    if (div.dataset.mopeClick || typeof div.on !== 'function') return;
    div.dataset.mopeClick = '1';
    div.on('plotly_click', (event) => {
      const point = event.points && event.points[0];
      const trace = String((point && point.data && point.data.name) || '');
      if (trace.endsWith(' head')) pick(`${trace.split(' ')[0]}.L${point.y}.head${point.x}`);
    });
  });
  bind();
  new MutationObserver(bind).observe(document.body, {childList: true, subtree: true});
}
"""


def build(state: AppState) -> gr.Blocks:
    """The page of an app instance."""
    page = Page(state)
    with gr.Blocks(title="MoPE-CLIP Explorer") as demo:
        page.add(session=gr.BrowserState("", storage_key="mope-clip-explorer", secret=browser_secret(state.home)),
                 timer=gr.Timer(1.0))
        gr.Markdown("# MoPE-CLIP Explorer\nSee which parts of a CLIP matter, prune it for real, distill it back, "
                    "and compare — in the browser.")
        with gr.Tabs():
            for tab in TABS:
                tab.build(page)
        loaded = page.on(demo.load, lambda session: {"session": page.session(session)[0]}, ["session"], ["session"],
                         api_visibility="private")
        for tab in TABS:
            tab.wire(page, loaded)
        page.wire_pngs()
        demo.load(None, js=HEAD_CLICK_JS, api_visibility="private")
    return demo
