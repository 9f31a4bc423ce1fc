"""A static figure of an explanation (matplotlib): the sequence heatmap and the output-token table.

For papers and slides: the top panel shades the finest level's units in text order
(Captum's `plot_seq_attr` view), the bottom one is the output-token x input-unit
table when the value has per-token columns (Captum's `plot_token_attr`), otherwise a
bar chart of the finest level's top units. matplotlib is an optional dependency
(`pip install 'longshap[plot]'`), imported only here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from longshap.client.render import short, top_features

MAX_SEQUENCE_UNITS = 40
TOP_UNITS = 12


def _finest(explanation: dict) -> dict:
    return explanation["levels"][-1]


def _sequence(explanation: dict) -> list[dict]:
    """The finest level's units in text order, cut to the most important ones when there are too many."""
    level = _finest(explanation)
    chosen = top_features(level, MAX_SEQUENCE_UNITS)
    return sorted(chosen, key=lambda f: (f["doc"], f["start"]))


def write_png(explanation: dict, path: Path) -> None:
    """Write the figure to `path` (PNG, 150 dpi)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise RuntimeError("--png needs matplotlib: pip install 'longshap[plot]'") from error
    level = _finest(explanation)
    units = _sequence(explanation)
    tokens = explanation.get("answer_tokens")
    table = [f for f in top_features(level, TOP_UNITS) if f.get("values_by_token")] if tokens else []
    rows = len(table) if table else min(TOP_UNITS, len(level["features"]))
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(max(8, 0.45 * len(units) + 2), 3 + 0.35 * rows), gridspec_kw={"height_ratios": [1, max(2, rows * 0.35)]},
    )
    values = np.array([[f["value"] for f in units]])
    scale = float(np.abs(values).max()) or 1.0
    image = top.imshow(values, cmap="RdYlGn", vmin=-scale, vmax=scale, aspect="auto")
    top.set_xticks(range(len(units)), [short(f["text"], 18) for f in units], rotation=60, ha="right", fontsize=8)
    top.set_yticks([])
    top.set_title(f"{level['level']} attributions ({level['method']}, value {explanation['value_function']}) — answer: {short(explanation['answer'], 50)!r}", fontsize=10)
    figure.colorbar(image, ax=top, fraction=0.03, pad=0.01)
    if table and tokens:  # table is only non-empty when there are answer tokens
        grid = np.array([f["values_by_token"] + [f["value"]] for f in table])
        scale = float(np.abs(grid).max()) or 1.0
        bottom.imshow(grid, cmap="RdYlGn", vmin=-scale, vmax=scale, aspect="auto")
        bottom.set_xticks(range(len(tokens) + 1), [repr(t)[1:-1] for t in tokens] + ["Σ"], fontsize=8)
        bottom.set_yticks(range(len(table)), [short(f["text"], 30) for f in table], fontsize=8)
        for (r, c), v in np.ndenumerate(grid):
            bottom.text(c, r, f"{v:+.2g}", ha="center", va="center", fontsize=7)
        bottom.set_title(f"top {level['level']} units × answer tokens", fontsize=10)
    else:
        top_units = top_features(level, TOP_UNITS)[::-1]
        bottom.barh(range(len(top_units)), [f["value"] for f in top_units],
                    color=["#16a34a" if f["value"] >= 0 else "#dc2626" for f in top_units])
        bottom.set_yticks(range(len(top_units)), [short(f["text"], 30) for f in top_units], fontsize=8)
        bottom.axvline(0, color="#888", linewidth=0.8)
        bottom.set_title(f"top {level['level']} units", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150, format="png")
    plt.close(figure)
