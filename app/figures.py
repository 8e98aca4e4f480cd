"""Plotly figures of a scores table: heatmaps, per-layer bars, MoPE vs a baseline, accuracy vs compression.

Every figure sets its height (Gradio 6 can render a Plotly figure without one at zero height).
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mope.anytime import flagged, used_span

KIND_TITLES = {"head": "attention heads", "neurons": "FFN neuron groups"}


def empty(message: str, height: int = 240) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font={"size": 14}, xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_layout(height=height, xaxis={"visible": False}, yaxis={"visible": False}, margin={"t": 20, "b": 20})
    return fig


def ranks(df: pd.DataFrame, column: str) -> pd.Series:
    """1 = the most important unit of its tower and kind (the last one a plan would remove)."""
    return df.groupby(["tower", "kind"])[column].rank(ascending=False, method="min")


def heatmaps(df: pd.DataFrame, column: str = "mope", removed: set[str] = frozenset()) -> go.Figure:
    """Layer × head and layer × neuron-group heatmaps per tower, each tower on its own colour scale; units a
    plan removes are crossed out and the layers it removes shaded across both panels.

    Units not scored yet (NaN; df.attrs["scored"] counts the others) are blank: a heatmap fills in while a job runs.
    Cells that are still anytime estimates (column `estimate`) are hatched. The heatmaps of a table are drawn once
    (the same table object: a budget slider redraws only the marks of what its plan removes).
    """
    base = _base_heatmaps(df, column)
    if base is None:
        return empty("No head or neuron-group scores yet")
    drawn, panels = base
    fig = go.Figure(data=drawn.data, layout=drawn.layout, _validate=False)  # a copy; checked once, in _draw_heatmaps
    gone = df[df.unit.isin(removed) & df.kind.isin(KIND_TITLES)]
    for (tower, kind), (xref, yref) in panels.items():
        gone_layers = sorted(int(n.split(".L")[1]) for n in removed if n.startswith(f"{tower}.L") and n.count(".") == 1)
        _mark_removed(fig, gone[(gone.tower == tower) & (gone.kind == kind)], gone_layers, xref, yref,
                      label=kind == "head")
    scored = df.attrs.get("scored", len(df))
    done = f" — {scored}/{len(df)} units scored" if scored < len(df) else ""
    marked = f" · red × = removed by the plan ({len(removed)})" if removed else ""
    fig.update_layout(title={"text": f"{column} per unit (higher = more important){done}{marked}{estimates_line(df)}",
                             "font": {"size": 14}})
    return fig


Panels = dict[tuple[str, str], tuple[str, str]]  # (tower, kind) → its x and y axis ("x3", "y3")
_BASES: OrderedDict[tuple[int, str], tuple[weakref.ref, tuple[go.Figure, Panels] | None]] = OrderedDict()
_BASES_LOCK = threading.Lock()


def _base_heatmaps(df: pd.DataFrame, column: str) -> tuple[go.Figure, Panels] | None:
    """(the heatmaps without plan marks, their panels' axes) of this table object, made once for
    each of the last few tables (a table the app holds is never changed in place)."""
    key = (id(df), column)
    with _BASES_LOCK:
        ref, made = _BASES.get(key, (None, None))
        if ref is not None and ref() is df:
            _BASES.move_to_end(key)
            return made
    made = _draw_heatmaps(df, column)
    with _BASES_LOCK:
        _BASES[key] = (weakref.ref(df), made)
        while len(_BASES) > 8:
            _BASES.popitem(last=False)
    return made


def _draw_heatmaps(df: pd.DataFrame, column: str) -> tuple[go.Figure, Panels] | None:
    width = df[df.kind.isin(KIND_TITLES)]
    if width.empty:
        return None
    towers = list(dict.fromkeys(width.tower))
    titles = [f"{t} · {KIND_TITLES[k]}" for t in towers for k in KIND_TITLES]
    fig = make_subplots(rows=len(towers), cols=2, subplot_titles=titles, column_widths=[0.3, 0.7],
                        horizontal_spacing=0.08, vertical_spacing=0.18)
    width = width.assign(rank=ranks(width, column))
    panels = {}
    for r, tower in enumerate(towers, 1):
        low, high = _colour_range(width.loc[width.tower == tower, column])
        for c, kind in enumerate(KIND_TITLES, 1):
            part = width[(width.tower == tower) & (width.kind == kind)]
            if part.empty:
                continue
            _panel(fig, part, column, (low, high), r, c, colorbar=_colorbar(fig, tower, column, r) if c == 2 else None)
            _mark_estimates(fig, part, r, c)
            axes = fig.get_subplot(r, c)
            panels[(tower, kind)] = (axes.xaxis.plotly_name.replace("axis", ""),
                                     axes.yaxis.plotly_name.replace("axis", ""))
    fig.update_layout(height=280 * len(towers) + 60, margin={"t": 70, "b": 40, "l": 50, "r": 20})
    return fig, panels


def estimates_line(df: pd.DataFrame) -> str:
    """' · hatched = estimate (round 2, 16–32 images per unit)' while an anytime table holds estimates."""
    if not flagged(df, "estimate").any():
        return ""
    where = f"round {int(df['round'].max())}, " if "round" in df.columns and df["round"].notna().any() else ""
    return f" · hatched = estimate ({where}{used_span(df)})"


def _mark_estimates(fig: go.Figure, part: pd.DataFrame, r: int, c: int) -> None:
    """Diagonal hatching over the cells whose score is still an anytime estimate."""
    rough = part[flagged(part, "estimate")]
    if len(rough):
        fig.add_trace(go.Scatter(x=rough["index"], y=rough["layer"], mode="markers", hoverinfo="skip", name="estimates",
                                 marker={"symbol": "line-ne", "size": 14, "line": {"width": 1.5, "color": "rgba(255,255,255,0.8)"}},
                                 showlegend=False), row=r, col=c)


def _panel(fig: go.Figure, part: pd.DataFrame, column: str, zrange: tuple[float, float], r: int, c: int,
           colorbar: dict | None) -> None:
    """One heatmap with axes that fit its grid even when nothing is scored yet."""
    z, text = _grid(part, column)
    fig.add_trace(go.Heatmap(z=z, customdata=text, hovertemplate="%{customdata}<extra></extra>", colorscale="Viridis",
                             name=f"{part.tower.iloc[0]} {part.kind.iloc[0]}",  # the page's click handler reads it
                             zmin=zrange[0], zmax=zrange[1], showscale=colorbar is not None, colorbar=colorbar),
                  row=r, col=c)
    layers, cells = z.shape
    fig.update_xaxes(title_text="head" if part.kind.iloc[0] == "head" else "neuron group", range=[-0.5, cells - 0.5],
                     row=r, col=c)
    fig.update_yaxes(title_text="layer", range=[layers - 0.5, -0.5], dtick=1, row=r, col=c)


def _colorbar(fig: go.Figure, tower: str, column: str, row: int) -> dict:
    """A colour bar beside its own tower's row (each tower has its own scale)."""
    low, high = fig.get_subplot(row, 2).yaxis.domain
    return {"title": f"{tower}<br>{column}", "len": (high - low) * 0.95, "y": (low + high) / 2, "yanchor": "middle"}


def _mark_removed(fig: go.Figure, gone: pd.DataFrame, gone_layers: list[int], xref: str, yref: str,
                  label: bool) -> None:
    """Red × on a panel's removed heads / neuron groups; removed layers shaded across the panel (with a label)."""
    gone = gone[~gone.layer.isin(gone_layers)]
    if len(gone):
        fig.add_trace(go.Scatter(x=gone["index"], y=gone["layer"], mode="markers", hoverinfo="skip", xaxis=xref,
                                 yaxis=yref, marker={"symbol": "x-thin", "size": 12, "line": {"width": 2, "color": "red"}},
                                 showlegend=False))
    for layer in gone_layers:
        fig.add_shape(type="rect", xref=f"{xref} domain", x0=0, x1=1, yref=yref, y0=layer - 0.5, y1=layer + 0.5,
                      fillcolor="red", opacity=0.35, line={"width": 2, "color": "red"})
        if label:
            fig.add_annotation(text=f"L{layer} removed", xref=f"{xref} domain", x=0.5, yref=yref, y=layer,
                               showarrow=False, font={"color": "white", "size": 11})


def _colour_range(values: pd.Series) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)


def _grid(part: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    layers, cells = int(part.layer.max()) + 1, int(part["index"].max()) + 1
    z = np.full((layers, cells), np.nan)
    text = np.full((layers, cells), "", dtype=object)
    for row in part.itertuples(index=False):
        z[row.layer, row.index] = getattr(row, column)
        text[row.layer, row.index] = _hover(row, column)
    return z, text


def _hover(row, column: str) -> str:
    lines = [f"<b>{row.unit}</b>", f"MoPE {row.mope:.4g}" if row.mope == row.mope else "MoPE: not scored yet"]
    if hasattr(row, "magnitude"):
        lines.append(f"magnitude {row.magnitude:.4g}")
    if column not in ("mope", "magnitude"):
        lines.append(f"{column} {getattr(row, column):.4g}")
    if row.rank == row.rank:  # NaN until scored
        lines.append(f"rank {int(row.rank)} by {column} (1 = most important)")
    estimate = getattr(row, "estimate", False)
    if estimate == estimate and bool(estimate):  # NaN (not scored yet) is no estimate
        ran = (f"{int(row.texts_used)} texts" if getattr(row, "tower", "") == "text" and hasattr(row, "texts_used")
               else f"{int(row.images_used)} images")
        lines.append(f"estimate from {ran} (± {row.se:.2g} standard error)")
        first = getattr(row, "first_order", False)
        if first == first and bool(first):
            lines.append("the loss on the other images: first-order estimates")
    return "<br>".join(lines)


def layer_bars(df: pd.DataFrame, column: str = "mope") -> go.Figure:
    """Per layer: the layer's own score when layers were scored, else the sum over its heads and neuron groups."""
    if df.empty:
        return empty("No scores yet")
    fig = go.Figure()
    for tower, part in df.groupby("tower", sort=False):
        layers = part[part.kind == "layer"]
        if len(layers):
            values, label = layers.set_index("layer")[column], "whole layer removed"
        else:
            values, label = part.groupby("layer")[column].sum(), "sum over heads + neuron groups"
        fig.add_trace(go.Bar(x=[f"L{i}" for i in values.index], y=values.values, name=f"{tower} ({label})",
                             hovertemplate=f"{tower} %{{x}}<br>{column} %{{y:.4g}}<extra></extra>"))
    fig.update_layout(height=320, barmode="group", title={"text": f"{column} per layer", "font": {"size": 14}},
                      xaxis_title="layer", yaxis_title=column, margin={"t": 50, "b": 40},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def versus(df: pd.DataFrame, baseline: str, rho: pd.DataFrame) -> go.Figure:
    """MoPE against a baseline, one point per unit; heads and neuron groups on the left, whole layers on the
    right on their own axes (their scale would squash the units); Spearman ρ per tower and kind in the legend."""
    if baseline not in df.columns:
        return empty(f"No {baseline} scores in this table")
    has_layers = (df.kind == "layer").any() and (df.kind != "layer").any()
    fig = make_subplots(rows=1, cols=2 if has_layers else 1, column_widths=[0.6, 0.4] if has_layers else None,
                        subplot_titles=["heads and neuron groups", "whole layers"] if has_layers else None)
    for (tower, kind), part in df.groupby(["tower", "kind"], sort=False):
        r = rho[(rho.tower == tower) & (rho.kind == kind)][baseline] if baseline in rho else []
        name = f"{tower} {kind} (ρ = {float(r.iloc[0]):.2f})" if len(r) and r.iloc[0] == r.iloc[0] else f"{tower} {kind}"
        fig.add_trace(go.Scatter(x=part[baseline], y=part["mope"], mode="markers", text=part["unit"], name=name,
                                 hovertemplate=f"%{{text}}<br>{baseline} %{{x:.4g}}<br>MoPE %{{y:.4g}}<extra></extra>"),
                      row=1, col=2 if has_layers and kind == "layer" else 1)
    fig.update_xaxes(title_text=baseline)
    fig.update_yaxes(title_text="MoPE")
    fig.update_layout(height=380, title={"text": f"MoPE vs {baseline} (Spearman ρ in the legend)", "font": {"size": 14}},
                      margin={"t": 60, "b": 40})
    return fig


EVAL_KEYS = ("acc1", "text_retrieval_recall@5", "image_retrieval_recall@5")


def losses(curve: list[dict], history: list[dict], references: dict | None = None, steps: int | None = None) -> go.Figure:
    """Distillation loss terms per step, the eval metrics (from step 0, before training) on a second axis, and
    reference lines: the teacher's metric and the pruned student's before distillation."""
    if not curve and not history:
        return empty("No training steps yet", height=300)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    df = pd.DataFrame(curve)
    for term in [c for c in df.columns if c not in ("step", "data_s", "compute_s")]:  # seconds are no loss
        fig.add_trace(go.Scatter(x=df.step, y=df[term], mode="lines", name=term), secondary_y=False)
    evals = pd.DataFrame(history)
    last = max([steps or 0, *(df.step if len(df) else []), *(evals.step if len(evals) else [])], default=1)
    for key in [k for k in EVAL_KEYS if k in evals]:
        fig.add_trace(go.Scatter(x=evals.step, y=evals[key], mode="lines+markers", name=key, line={"dash": "dot"},
                                 marker={"size": 9, "symbol": "diamond"}), secondary_y=True)
    for who, dash in (("teacher", "dash"), ("pruned", "dashdot")):
        for key in [k for k in EVAL_KEYS if k in (references or {}).get(who, {})]:
            label = "teacher" if who == "teacher" else "pruned, before distillation"
            fig.add_trace(go.Scatter(x=[0, last], y=[references[who][key]] * 2, mode="lines", name=f"{key}: {label}",
                                     line={"dash": dash, "width": 1.5, "color": "grey" if who == "teacher" else "firebrick"},
                                     hovertemplate=f"{label}: %{{y:.4f}}<extra></extra>"), secondary_y=True)
    fig.update_yaxes(title_text="loss", type="log", secondary_y=False)
    fig.update_yaxes(title_text="eval metric", range=[0, 1.02], secondary_y=True)
    fig.update_layout(height=360, xaxis_title="step", margin={"t": 30, "b": 40}, legend={"orientation": "h", "y": -0.3})
    return fig


def compression(study: pd.DataFrame, metric: str) -> go.Figure:
    """The accuracy-vs-compression study: one line per ranking."""
    fig = go.Figure()
    for name, part in study.groupby("ranking", sort=False):
        fig.add_trace(go.Scatter(x=part.removed * 100, y=part[metric], mode="lines+markers", name=name))
    fig.update_layout(height=340, xaxis_title="head + FFN parameters removed (%)", yaxis_title=metric,
                      title={"text": "Pruned without distillation: which ranking keeps the most?", "font": {"size": 14}},
                      margin={"t": 50, "b": 40})
    return fig


FORCED_CHOICE = ("CLIP picks among the labels you typed only: the probabilities of each image sum to 100% over them, "
                 "so an image of something else still gets a confident-looking label.")


def probability_bars(images: list[str], labels: list[str], probs: dict[str, np.ndarray],
                     errors: dict[int, str] | None = None) -> go.Figure:
    """Per image (one panel each), every label's probability for each model side by side (a forced choice)."""
    if not images:
        return empty("No images yet")
    errors = errors or {}
    fig = make_subplots(rows=len(images), cols=1, subplot_titles=[_short(n, 60) for n in images],
                        vertical_spacing=min(0.08, 0.5 / len(images)))
    for model, (name, p) in enumerate(probs.items()):
        for i in range(len(images)):
            if i in errors:
                continue
            fig.add_trace(go.Bar(y=labels, x=p[i], orientation="h", name=name, legendgroup=name, showlegend=i == 0,
                                 marker={"color": PALETTE[model % len(PALETTE)]},
                                 hovertemplate=f"{name}<br>%{{y}}: %{{x:.1%}}<extra></extra>"), row=i + 1, col=1)
    for i, message in errors.items():
        _centre_note(fig, i + 1, 1, f"not predicted: {_short(message, 90)}", {"color": "firebrick"})
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    fig.update_layout(height=max(220, len(images) * (40 + 16 * len(labels) * max(1, len(probs)) // 2) + 80),
                      barmode="group", margin={"t": 60, "b": 30, "l": 140},
                      title={"text": "Probability of each typed label (a forced choice among them)", "font": {"size": 14}},
                      legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"})
    return fig


PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c")


def _centre_note(fig: go.Figure, row: int, col: int, text: str, font: dict) -> None:
    """A note in the middle of a subplot, placed on the page (a subplot without traces draws no axes to refer to)."""
    axes = fig.get_subplot(row, col)
    x, y = sum(axes.xaxis.domain) / 2, sum(axes.yaxis.domain) / 2
    fig.add_annotation(text=text, showarrow=False, font=font, xref="paper", x=x, yref="paper", y=y)


def _short(text: str, n: int) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def attention_maps(maps: dict, image: np.ndarray | None = None) -> go.Figure:
    """One head's attention in each model side by side (HeadAttention records): the class token over the patch
    grid (vision, beside the image) or the end-of-text token over the prompt's tokens (text); a head the pruning
    removed is shown as removed."""
    if not maps:
        return empty("Pick a head", height=300)
    first = next(iter(maps.values()))
    unit = f"{first.tower}.L{first.layer}.head{first.head}"
    vision = first.tower == "vision"
    shown = ([("image", None)] if vision and image is not None else []) + list(maps.items())
    fig = make_subplots(rows=1, cols=len(shown), subplot_titles=[n for n, _ in shown],
                        horizontal_spacing=0.06)
    for c, (_, m) in enumerate(shown, 1):
        if m is None:
            fig.add_trace(go.Image(z=image, hoverinfo="skip"), row=1, col=c)
        elif m.removed:
            _centre_note(fig, 1, c, f"{m.removed} by pruning", {"size": 15, "color": "firebrick"})
        elif vision:
            fig.add_trace(go.Heatmap(z=m.weights.numpy(), colorscale="Inferno", zmin=0, showscale=c == len(shown),
                                     hovertemplate="patch row %{y}, col %{x}: %{z:.3f}<extra></extra>"), row=1, col=c)
            fig.update_yaxes(autorange="reversed", scaleanchor=f"x{c if c > 1 else ''}", row=1, col=c)
            fig.update_xaxes(constrain="domain", row=1, col=c)
        else:
            fig.add_trace(go.Bar(x=list(range(len(m.tokens))), y=m.weights.numpy(), showlegend=False,
                                 customdata=m.tokens, hovertemplate="%{customdata}: %{y:.3f}<extra></extra>"),
                          row=1, col=c)
            fig.update_xaxes(tickvals=list(range(len(m.tokens))), ticktext=m.tokens, tickangle=-45, row=1, col=c)
    what = "class token → patches" if vision else "end-of-text token → prompt tokens"
    side = ", original vs pruned" if len(maps) > 1 else ""
    fig.update_layout(height=360, margin={"t": 70, "b": 60},
                      title={"text": f"Attention of {unit} ({what}){side}", "font": {"size": 14}})
    return fig


def per_class(df: pd.DataFrame, models: list[str], top: int = 20) -> go.Figure:
    """Top-1 accuracy per class for each model side by side, the classes that lost most first."""
    if df is None or df.empty:
        return empty("No per-class accuracy yet", height=300)
    part = df.head(top)
    fig = go.Figure()
    for i, name in enumerate(models):
        fig.add_trace(go.Bar(x=part["class"], y=part[name], name=name, marker={"color": PALETTE[i % len(PALETTE)]},
                             hovertemplate=f"{name}<br>%{{x}}: %{{y:.0%}}<extra></extra>"))
    more = f" (the {top} that lost most of {len(df)})" if len(df) > top else ""
    fig.update_layout(height=380, barmode="group", yaxis={"range": [0, 1.02], "tickformat": ".0%", "title": "top-1"},
                      xaxis={"tickangle": -45}, margin={"t": 50, "b": 110}, legend={"orientation": "h", "y": 1.1},
                      title={"text": f"Accuracy per class, lost most first{more}", "font": {"size": 14}})
    return fig
