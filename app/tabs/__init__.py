"""The page's tabs, one module each: `build(page)` makes the tab's components (inside the page's Tabs) and
`wire(page, loaded)` wires its events, `loaded` being the page-load event that settled the session.
Components are addressed by name through the Page; heavy work is in app.handlers, imported at first use.
"""
