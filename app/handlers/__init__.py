"""What the app's events do, as functions of plain values (testable without a browser), one module per tab.

They take the AppState (allowed folders, stores, caches) and a person's session dict, check every path a
browser sent where it is used (app.security), and raise MopeError with a sentence saying what to do.
Heavy work goes through `mope` in this process (loading, model cards, comparisons, predictions) or the
job worker (scoring, studies, prune-and-distill).
"""
