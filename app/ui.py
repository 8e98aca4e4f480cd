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
    return demo
