"""Plotly figures of a scores table: heatmaps, per-layer bars, MoPE vs a baseline, accuracy vs compression.

Every figure sets its height (Gradio 6 can render a Plotly figure without one at zero height).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

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
    """Layer × head and layer × neuron-group heatmaps per tower; units a plan removes are crossed out.

    Units not scored yet (NaN; df.attrs["scored"] counts the others) are blank: a heatmap fills in while a job runs.
    """
    width = df[df.kind.isin(KIND_TITLES)]
    if width.empty:
        return empty("No head or neuron-group scores yet")
    towers = list(dict.fromkeys(width.tower))
    titles = [f"{t} · {KIND_TITLES[k]}" for t in towers for k in KIND_TITLES]
    fig = make_subplots(rows=len(towers), cols=2, subplot_titles=titles, column_widths=[0.3, 0.7],
                        horizontal_spacing=0.08, vertical_spacing=0.18)
    width = width.assign(rank=ranks(width, column))
    low, high = _colour_range(width[column])
    for r, tower in enumerate(towers, 1):
        for c, kind in enumerate(KIND_TITLES, 1):
            part = width[(width.tower == tower) & (width.kind == kind)]
            if part.empty:
                continue
            z, text = _grid(part, column)
            fig.add_trace(go.Heatmap(z=z, customdata=text, hovertemplate="%{customdata}<extra></extra>",
                                     colorscale="Viridis", zmin=low, zmax=high, showscale=(r, c) == (1, 2),
                                     colorbar={"title": column, "len": 0.8}), row=r, col=c)
            gone = part[part.unit.isin(removed)]
            if len(gone):
                fig.add_trace(go.Scatter(x=gone["index"], y=gone["layer"], mode="markers", hoverinfo="skip",
                                         marker={"symbol": "x-thin", "size": 12, "line": {"width": 2, "color": "red"}},
                                         showlegend=False), row=r, col=c)
            fig.update_xaxes(title_text="head" if kind == "head" else "neuron group", row=r, col=c)
            fig.update_yaxes(title_text="layer", autorange="reversed", row=r, col=c)
    scored = df.attrs.get("scored", len(df))
    done = f" — {scored}/{len(df)} units scored" if scored < len(df) else ""
    marked = f" · red × = removed by the plan ({len(removed)})" if removed else ""
    fig.update_layout(height=280 * len(towers) + 60, margin={"t": 70, "b": 40, "l": 50, "r": 20},
                      title={"text": f"{column} per unit (higher = more important){done}{marked}", "font": {"size": 14}})
    return fig


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
    """MoPE against a baseline, one point per unit; Spearman ρ per tower and kind in the legend."""
    if baseline not in df.columns:
        return empty(f"No {baseline} scores in this table")
    fig = go.Figure()
    for (tower, kind), part in df.groupby(["tower", "kind"], sort=False):
        r = rho[(rho.tower == tower) & (rho.kind == kind)][baseline]
        fig.add_trace(go.Scatter(x=part[baseline], y=part["mope"], mode="markers", text=part["unit"],
                                 name=f"{tower} {kind} (ρ = {float(r.iloc[0]):.2f})" if len(r) else f"{tower} {kind}",
                                 hovertemplate=f"%{{text}}<br>{baseline} %{{x:.4g}}<br>MoPE %{{y:.4g}}<extra></extra>"))
    fig.update_layout(height=360, title={"text": f"MoPE vs {baseline} (Spearman ρ in the legend)", "font": {"size": 14}},
                      xaxis_title=baseline, yaxis_title="MoPE", margin={"t": 50, "b": 40})
    return fig


def losses(curve: list[dict], history: list[dict]) -> go.Figure:
    """Distillation loss terms per step, and the eval metrics on a second axis."""
    if not curve:
        return empty("No training steps yet", height=300)
    df = pd.DataFrame(curve)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for term in [c for c in df.columns if c != "step"]:
        fig.add_trace(go.Scatter(x=df.step, y=df[term], mode="lines", name=term), secondary_y=False)
    evals = pd.DataFrame(history)
    for key in [k for k in ("acc1", "text_retrieval_recall@5", "image_retrieval_recall@5") if k in evals]:
        fig.add_trace(go.Scatter(x=evals.step, y=evals[key], mode="lines+markers", name=key, line={"dash": "dot"},
                                 marker={"size": 9, "symbol": "diamond"}), secondary_y=True)
    fig.update_yaxes(title_text="loss", type="log", secondary_y=False)
    fig.update_yaxes(title_text="eval metric", range=[0, 1], secondary_y=True)
    fig.update_layout(height=340, xaxis_title="step", margin={"t": 30, "b": 40}, legend={"orientation": "h", "y": -0.3})
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
