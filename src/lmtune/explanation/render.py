"""Pictures and pages of explanations: PNG heatmaps/highlights (matplotlib) and a self-contained
interactive HTML view (inline script and data, nothing fetched)."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

import torch

from lmtune.explanation.core import Explanation
from lmtune.svg_charts import line_chart

MAX_PLOT_TOKENS = 40
"""Heatmaps of longer inputs show the 40 tokens the rollout ranks highest (in text order)."""
TOP_EDGES = 8
"""The interactive view keeps each token's 8 strongest attention edges per head (any input length)."""
METHOD_NAMES = {"ig": "Integrated Gradients", "gradxinput": "gradient × input", "occlusion": "occlusion"}


def plot_window(explanation: Explanation) -> list[int]:
    """Token positions shown in heatmaps: all, or the MAX_PLOT_TOKENS with the most rollout from [CLS]."""
    n = len(explanation.tokens)
    if n <= MAX_PLOT_TOKENS:
        return list(range(n))
    importance = explanation.rollout[0]
    return sorted(torch.topk(importance, MAX_PLOT_TOKENS).indices.tolist())


def write_pngs(explanation: Explanation, out: Path, stem: str) -> list[Path]:
    """heads grid, per-layer means + rollout, and attribution highlights, as PNG files under ``out``."""
    from lmtune.extras import require

    require("matplotlib", "explain: PNG pictures (or --no-png)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = plot_window(explanation)
    labels = [explanation.tokens[i] for i in window]
    att = explanation.attention[:, :, window][:, :, :, window]
    note = "" if len(window) == len(explanation.tokens) else f" ({len(window)} of {len(explanation.tokens)} tokens)"
    paths = [_save(_heads_figure(plt, att, labels, note), out / f"{stem}-attention-heads.png"),
             _save(_layers_figure(plt, att, explanation.rollout[window][:, window], labels, note),
                   out / f"{stem}-attention-layers.png")]
    if explanation.attributions:
        paths.append(_save(_attributions_figure(plt, explanation), out / f"{stem}-attributions.png"))
    return paths


def _heads_figure(plt: Any, att: torch.Tensor, labels: list[str], note: str) -> Any:
    """One panel per (layer, head): rows attend to columns."""
    layers, heads = att.shape[:2]
    fig, axes = plt.subplots(layers, heads, figsize=(1.6 * heads, 1.6 * layers), squeeze=False)
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer][head]
            ax.imshow(att[layer, head].numpy(), cmap="viridis", vmin=0, vmax=1)
            # token labels on the outer panels only: inner ones would repeat them 70 times
            ax.set_yticks(range(len(labels)), labels if head == 0 else [], fontsize=3)
            ax.set_xticks(range(len(labels)), labels if layer == layers - 1 else [], fontsize=3, rotation=90)
            ax.tick_params(length=0, pad=1)
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=7)
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=7)
    fig.suptitle(f"Attention per layer and head{note}: rows attend to columns", fontsize=10)
    return fig


def _layers_figure(plt: Any, att: torch.Tensor, rollout: torch.Tensor, labels: list[str], note: str) -> Any:
    """Head-averaged attention of each layer, and the rollout."""
    layers = att.shape[0]
    fig, axes = plt.subplots(1, layers + 1, figsize=(3.2 * (layers + 1), 3.6), squeeze=False)
    views = [(f"layer {layer} (head mean)", att[layer].mean(0)) for layer in range(layers)]
    views.append(("rollout", rollout))
    for ax, (title, matrix) in zip(axes[0], views, strict=True):
        ax.imshow(matrix.numpy(), cmap="viridis")
        ax.set_title(title, fontsize=8)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=5)
        ax.set_yticks(range(len(labels)), labels, fontsize=5)
    fig.suptitle(f"Head-averaged attention per layer and attention rollout{note}", fontsize=10)
    return fig


def _attributions_figure(plt: Any, explanation: Explanation) -> Any:
    """Token and word highlights for each attribution method."""
    methods = list(explanation.attributions)
    fig, axes = plt.subplots(2 * len(methods), 1, figsize=(12, 1.1 * 2 * len(methods)), squeeze=False)
    for k, method in enumerate(methods):
        tokens = [(t, s) for t, s, special in zip(explanation.tokens, explanation.attributions[method],
                                                   _special(explanation), strict=True) if not special]
        words = list(zip(explanation.words, explanation.word_attributions(method), strict=True))
        _highlight_row(axes[2 * k][0], tokens, f"{METHOD_NAMES[method]}: tokens")
        _highlight_row(axes[2 * k + 1][0], words, f"{METHOD_NAMES[method]}: words")
    fig.suptitle(f"Attributions toward {explanation.target!r} (p = {explanation.probability:.3f}); "
                 "red raises it, blue lowers it", fontsize=10)
    return fig


def _special(explanation: Explanation) -> list[bool]:
    return [w is None for w in explanation.word_of]


def _highlight_row(ax: Any, items: list[tuple[str, float]], title: str) -> None:
    """Words drawn left to right, each on a background coloured by its score."""
    ax.set_axis_off()
    ax.set_title(title, fontsize=8, loc="left")
    peak = max((abs(s) for _, s in items), default=0.0) or 1.0
    x = 0.0
    renderer = ax.figure.canvas.get_renderer()
    for text, score in items:
        alpha = min(abs(score) / peak, 1.0)
        color = (0.84, 0.15, 0.16, alpha) if score > 0 else (0.12, 0.47, 0.71, alpha)
        label = ax.text(x, 0.5, text, fontsize=9, va="center", transform=ax.transAxes,
                        bbox={"boxstyle": "round,pad=0.2", "facecolor": color, "edgecolor": "none"})
        width = label.get_window_extent(renderer=renderer).width / ax.get_window_extent(renderer=renderer).width
        x += width + 0.008
        if x > 0.98:  # the rest does not fit on this line
            ax.text(x, 0.5, "...", fontsize=9, va="center", transform=ax.transAxes)
            break


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def view_data(explanation: Explanation) -> dict[str, Any]:
    """What the interactive view needs: tokens, top attention edges per head, rollout, attributions."""
    att = explanation.attention
    k = min(TOP_EDGES, att.shape[-1])

    def edges(matrix: torch.Tensor) -> list[list[list[float]]]:
        values, indices = torch.topk(matrix, k, dim=-1)
        return [[[int(j), round(float(w), 4)] for w, j in zip(v, i, strict=True)]
                for v, i in zip(values, indices, strict=True)]

    heads = [[edges(att[layer, head]) for head in range(att.shape[1])] for layer in range(att.shape[0])]
    means = [edges(att[layer].mean(0)) for layer in range(att.shape[0])]
    return {
        "tokens": explanation.tokens, "heads": heads, "means": means, "rollout": edges(explanation.rollout),
        "attributions": {METHOD_NAMES[m]: {"tokens": [round(s, 5) for s in scores],
                                           "words": [round(s, 5) for s in explanation.word_attributions(m)]}
                         for m, scores in explanation.attributions.items()},
        "words": explanation.words,
    }


def fragment(explanations: list[Explanation], uid: str = "x") -> str:
    """The HTML of the explanations (interactive attention, highlights, checks); needs SCRIPT once per page."""
    parts = []
    for n, e in enumerate(explanations):
        ident = f"{uid}-{n}"
        data = json.dumps(view_data(e)).replace("</", "<\\/")
        parts.append(f'<div class="lmx" id="lmx-{ident}">')
        parts.append(f'<p class="lmx-text">{escape(e.text)}</p>')
        parts.append(f"<p>predicted <b>{escape(str(e.predicted))}</b>; explaining <b>{escape(str(e.target))}</b> "
                     f"(probability {e.probability:.3f})</p>")
        parts.append('<div class="lmx-controls">layer <select class="lmx-layer"></select> head '
                     '<select class="lmx-head"></select> <span class="lmx-hint">hover a token to see where it attends'
                     "</span></div>")
        parts.append('<div class="lmx-tokens"></div><div class="lmx-attr"></div>')
        parts.append(_checks_html(e))
        parts.append(f'<script type="application/json" class="lmx-data">{data}</script></div>')
    return "".join(parts)


def _checks_html(e: Explanation) -> str:
    rows = []
    for method in e.attributions:
        name = METHOD_NAMES[method]
        cells = [escape(name)]
        cells.append(f"{e.deltas[method]:.2e}" if method in e.deltas else "")
        deletion = e.deletion.get(method)
        cells.append(f"{deletion['area_attribution']:.4f} vs {deletion['area_random']:.4f} "
                     f"({'beats' if deletion['beats_random'] else 'does NOT beat'} random)" if deletion
                     else "not applicable (deleting tokens would move the explained position)")
        rho = e.randomization.get(method)
        cells.append(f"{rho:+.3f}" if rho is not None else "")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    table = ("<table><tr><th>method</th><th>IG convergence delta</th><th>deletion area: top-attributed vs random "
             "(lower falls faster)</th><th>rank correlation with a randomized model (low is good)</th></tr>"
             + "".join(rows) + "</table>")
    charts = ""
    if e.deletion:
        series = {}
        first = next(iter(e.deletion.values()))
        for method, d in e.deletion.items():
            series[METHOD_NAMES[method]] = list(zip([100 * f for f in d["fractions"]], d["attribution"], strict=True))
        series["random tokens"] = list(zip([100 * f for f in first["fractions"]], first["random"], strict=True))
        charts = line_chart(series, f"Deletion test: p({e.target}) as tokens are deleted", "% of tokens deleted",
                            "probability")
    base = ""
    if e.base:
        layers = ", ".join(f"{c:.3f}" for c in e.base["attention_change_per_layer"])
        corr = ", ".join(f"{METHOD_NAMES[m]} {r:+.3f}" for m, r in e.base["attribution_rank_correlation"].items())
        base = (f"<p><b>Before/after fine-tuning</b>: base model p({escape(str(e.target))}) = "
                f"{e.base['probability']:.3f} "
                f"({escape(e.base['note'])}); attention change per layer (total variation, 0-1): {layers}; "
                f"attribution rank correlation with the base model: {corr}.</p>")
    return f'<div class="lmx-checks">{table}{charts}{base}</div>'


STYLE = """
.lmx { border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; margin: 12px 0; background: #fff; }
.lmx-text { font-style: italic; } .lmx-hint { color: #777; font-size: 12px; }
.lmx-tokens, .lmx-attr div { line-height: 2.1; margin: 6px 0; }
.lmx-tok { padding: 2px 4px; margin: 1px; border-radius: 3px; cursor: default; border: 1px solid transparent; }
.lmx-tok.lmx-src { border-color: #000; }
.lmx-attr b { display: inline-block; min-width: 190px; font-size: 12px; color: #444; }
.lmx table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
.lmx td, .lmx th { border: 1px solid #ddd; padding: 3px 7px; }
"""

SCRIPT = """
(function () {
  function color(score, peak) {
    var a = peak > 0 ? Math.min(Math.abs(score) / peak, 1) : 0;
    return score >= 0 ? "rgba(214,39,40," + a + ")" : "rgba(31,119,180," + a + ")";
  }
  function span(text) {
    var s = document.createElement("span"); s.className = "lmx-tok"; s.textContent = text; return s;
  }
  document.querySelectorAll(".lmx").forEach(function (box) {
    var data = JSON.parse(box.querySelector(".lmx-data").textContent);
    var layer = box.querySelector(".lmx-layer"), head = box.querySelector(".lmx-head");
    data.heads.forEach(function (_, i) { layer.add(new Option(String(i), String(i))); });
    layer.add(new Option("rollout", "rollout"));
    head.add(new Option("mean", "mean"));
    data.heads[0].forEach(function (_, i) { head.add(new Option(String(i), String(i))); });
    var row = box.querySelector(".lmx-tokens");
    var spans = data.tokens.map(function (t) { var s = span(t); row.appendChild(s); return s; });
    function edges(i) {
      if (layer.value === "rollout") return data.rollout[i];
      var l = Number(layer.value);
      return head.value === "mean" ? data.means[l][i] : data.heads[l][Number(head.value)][i];
    }
    function show(i) {
      spans.forEach(function (s) { s.style.background = ""; s.classList.remove("lmx-src"); s.title = ""; });
      spans[i].classList.add("lmx-src");
      edges(i).forEach(function (e) {
        spans[e[0]].style.background = "rgba(44,160,44," + e[1] + ")";
        spans[e[0]].title = "attention " + e[1].toFixed(3);
      });
    }
    spans.forEach(function (s, i) { s.addEventListener("mouseenter", function () { show(i); }); });
    layer.addEventListener("change", function () { show(0); });
    head.addEventListener("change", function () { show(0); });
    show(0);
    var attr = box.querySelector(".lmx-attr");
    Object.keys(data.attributions).forEach(function (name) {
      [["tokens", data.tokens], ["words", data.words]].forEach(function (pair) {
        var scores = data.attributions[name][pair[0]], peak = 0;
        scores.forEach(function (v) { peak = Math.max(peak, Math.abs(v)); });
        var line = document.createElement("div"), label = document.createElement("b");
        label.textContent = name + " (" + pair[0] + ")";
        line.appendChild(label);
        pair[1].forEach(function (t, i) {
          if (pair[0] === "tokens" && /^\\[(CLS|SEP|PAD)\\]$|^<\\/?s>$/.test(t)) return;
          var s = span(t); s.style.background = color(scores[i], peak); s.title = scores[i].toFixed(4);
          line.appendChild(s);
        });
        attr.appendChild(line);
      });
    });
    box.setAttribute("data-ready", "1");
  });
})();
"""


def write_html(explanations: list[Explanation], path: Path, title: str) -> Path:
    """explain.html: the explanations as one self-contained interactive page."""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>body {{ font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 20px auto; padding: 0 16px; }}
.chart text {{ font-size: 11px; }} .chart .grid {{ stroke: #eee; }} .chart .axis {{ stroke: #888; }}{STYLE}</style>
<script>window.onerror = function (m) {{ document.documentElement.setAttribute("data-error", String(m)); }};</script>
</head><body><h1>{escape(title)}</h1>{fragment(explanations)}<script>{SCRIPT}</script></body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
