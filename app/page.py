"""The page's components by name, and events whose functions take and return values by name.

`page.on(trigger, fn, inputs=["session", "spec"], outputs=["session", "headline"])` calls
`fn(session=..., spec=...)`, which returns `{"session": ..., "headline": ...}`; an output left out of the
answer stays as it is. A MopeError becomes a message on the page; anything else a short notice (the
traceback goes to the server log, never to the browser).
"""
from __future__ import annotations

import functools
import importlib
import inspect
import logging

import gradio as gr
import plotly.graph_objects as go

from .state import AppState

log = logging.getLogger("app")


# After a download button's click event has made its file: download it in the browser, then empty the button.
DOWNLOAD_JS = """(file) => {
  if (file && file.url) {
    const link = document.createElement('a');
    link.href = file.url;
    link.download = file.orig_name || '';
    document.body.appendChild(link);
    link.click();
    link.remove();
  }
  return null;
}"""


class Lazy:
    """A module imported at its first use: the handlers bring torch and open_clip (~6 s on 2 cores)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self._name), attr)


class Page:
    """Components by name, the app's state, and the session a browser's id stands for."""

    def __init__(self, state: AppState):
        self.state = state
        self.parts: dict[str, gr.components.Component] = {}
        self.events: dict[str, object] = {}  # API name → its event, for other tabs to chain on (`.then`)
        self.pngs: list[str] = []  # plots with a PNG button (wired by wire_pngs)

    def add(self, **parts) -> None:
        clash = set(parts) & set(self.parts)
        if clash:
            raise ValueError(f"components named twice: {sorted(clash)}")
        self.parts.update(parts)

    def __getattr__(self, name: str):
        try:
            return self.__dict__["parts"][name]
        except KeyError:
            raise AttributeError(name) from None

    def session(self, session_id) -> tuple[str, dict]:
        """(id, session) for what the browser sent: unknown ids get a new, empty session."""
        return self.state.sessions.open(session_id)

    def save(self, session_id: str, after: dict, before: dict) -> None:
        self.state.sessions.save(session_id, after, before)

    def on(self, trigger, fn, inputs=(), outputs=(), quiet: bool = False, **kw):
        """Wire `trigger` (e.g. `page.load.click`, `event.then`) to `fn`, its values addressed by name.

        `fn` may also take `progress` (a Gradio progress bar) and `request` (the page connection). The figures it
        draws are kept per page connection (`state.figures`), so a PNG button can save what the page shows.
        """
        inputs, outputs = list(inputs), list(outputs)
        components = {name: self.parts[name] for name in outputs}
        plots = [name for name in outputs if isinstance(self.parts[name], gr.Plot)]
        wants_request = "request" in inspect.signature(fn).parameters

        def call(args, request=None, progress=None):
            extra = {"progress": progress} if progress is not None else {}
            if wants_request:
                extra["request"] = request
            answer = fn(**dict(zip(inputs, args)), **extra) or {}
            self.keep_figures(request, answer, plots)
            return {c: answer.get(name, gr.skip()) for name, c in components.items()}  # left out: stays as it is

        run = _guard(call, fn.__name__, quiet, components)
        params = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in [*inputs, "request"]]
        if "progress" in inspect.signature(fn).parameters:
            def wired(*args, progress=gr.Progress()):  # noqa: B008 (how Gradio asks for a progress bar)
                return run(args[:-1], request=args[-1], progress=lambda f, d: progress(f, desc=d))
            params.append(inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=gr.Progress()))
        else:
            def wired(*args):
                return run(args[:-1], request=args[-1])
        wired.__name__, wired.__signature__ = fn.__name__, inspect.Signature(params)  # API parameters by name
        wired.__annotations__ = {"request": gr.Request}  # Gradio passes the connection here; not an API parameter
        kw.setdefault("api_name", False)  # only events named here are named endpoints; the others stay unnamed
        event = trigger(wired, [self.parts[n] for n in inputs], [self.parts[n] for n in outputs], **kw)
        if kw.get("api_name"):
            self.events[kw["api_name"]] = event
        return event

    def keep_figures(self, request, answer: dict, plots: list[str]) -> None:
        """Keep the figures an event drew, by page connection and plot name (what a PNG button saves)."""
        connection = getattr(request, "session_hash", None)
        for name in plots if connection else ():
            if isinstance(answer.get(name), go.Figure):
                self.state.figures.put((connection, name), answer[name])

    def shown_figure(self, request, plot: str):
        """The figure this page connection shows in `plot`, or None."""
        return self.state.figures.peek((getattr(request, "session_hash", None), plot))

    def png_button(self, plot: str) -> None:
        """A "Figure (PNG)" button for `plot`, placed here (call inside the layout); wired by `wire_pngs`."""
        self.add(**{f"{plot}_png": gr.DownloadButton("Figure (PNG)", size="sm", elem_id=f"{plot.replace('_', '-')}-png")})
        self.pngs.append(plot)

    def wire_pngs(self) -> None:
        """Each PNG button saves the figure its page shows now (rendered on the server by plotly + kaleido)."""
        exports = Lazy("app.handlers.exports")
        for plot in self.pngs:
            def save(request, plot=plot):
                return {f"{plot}_png": exports.figure_png(self.shown_figure(request, plot), plot.replace("_", "-"),
                                                          self.state)}
            save.__name__ = f"{plot}_png"
            self.download(f"{plot}_png", save)

    def download(self, button: str, make, inputs=()) -> None:
        """A DownloadButton whose file `make(**inputs)` writes when clicked, then downloads at once (one click).

        `make` returns `{button: path}`. The button is left empty afterwards, so a later click makes the file anew
        (what it shows may have changed) instead of downloading the old one too.
        """
        made = self.on(self.parts[button].click, make, inputs, [button], api_visibility="private")
        made.then(None, [self.parts[button]], [self.parts[button]], js=DOWNLOAD_JS, api_visibility="private")

    def remember(self, names: list[str], loaded) -> None:
        """Keep these controls' values in the session, and put them back when the page is opened again."""
        def keep(session, **values):
            sid, before = self.session(session)
            self.save(sid, {**before, "controls": {**before["controls"], **values}}, before)

        def restore(session):
            kept = self.session(session)[1]["controls"]
            return {n: kept[n] for n in names if n in kept}

        for name in names:
            self.on(self.parts[name].change, keep, ["session", name], [], trigger_mode="always_last",
                    show_progress="hidden", api_visibility="private")
        self.on(loaded.then, restore, ["session"], names, api_visibility="private")


def _guard(call, name: str, quiet: bool, outputs: dict):
    """Errors as messages (or, for the timer, logged and nothing redrawn)."""
    @functools.wraps(call)
    def guarded(args, **kw):
        try:
            return call(args, **kw)
        except gr.Error:
            raise
        except Exception as e:  # the page stays usable; details go to the server log
            if quiet:
                log.exception("timer tick %s failed", name)
                return {c: gr.skip() for c in outputs.values()}
            if user_error(e):
                raise gr.Error(str(e), print_exception=False) from None
            log.exception("handler %s failed", name)
            raise gr.Error(f"Something went wrong ({type(e).__name__}). The app keeps running; the server log "
                           "has the details.", print_exception=False) from None
    return guarded


def user_error(e: Exception) -> bool:
    """A MopeError: something a person caused, whose message says what to do."""
    from mope.errors import MopeError

    return isinstance(e, MopeError)
