"""The page's tabs, one module each: `build(page)` makes the tab's components (inside the page's Tabs) and
`wire(page, loaded)` wires its events, `loaded` being the page-load event that settled the session.
Components are addressed by name through the Page; heavy work is in app.handlers, imported at first use.
"""
from __future__ import annotations

from ..page import Lazy

# the handler modules, imported at first use: the page is built and served before torch is imported
ha = Lazy("app.handlers.attention")
hc = Lazy("app.handlers.compare")
he = Lazy("app.handlers.exports")
hj = Lazy("app.handlers.jobs")
hm = Lazy("app.handlers.model")
hp = Lazy("app.handlers.prune")
hs = Lazy("app.handlers.scores")
