"""Views of an explanation (the engine's JSON schema): shaded terminal text, a self-contained HTML page, and the live view of a stream.

Both draw each document's text with its units shaded by value: green where a unit
raises the explained answer's value, red where it lowers it, each level scaled by its
largest |value|. Units nest (documents -> sentences -> words), and the finest
explained unit sets the colour.
"""
from __future__ import annotations

import html
import json
import math
import time
from typing import Callable, Sequence, TextIO

from longshap.proto.wire import pb

POSITIVE = (22, 163, 74)
NEGATIVE = (220, 38, 38)


def _children(features: Sequence[dict]) -> dict[str, list[dict]]:
    by_parent: dict[str, list[dict]] = {}
    for feature in features:
        by_parent.setdefault(feature["parent"], []).append(feature)
    for group in by_parent.values():
        group.sort(key=lambda f: f["start"])
    return by_parent


def _scales(explanation: dict) -> dict[str, float]:
    """Largest |value| per level, so shading means the same within a level."""
    return {level["level"]: max((abs(f["value"]) for f in level["features"]), default=0.0) or 1.0 for level in explanation["levels"]}


def _level_of(explanation: dict) -> dict[str, str]:
    return {f["id"]: level["level"] for level in explanation["levels"] for f in level["features"]}


def shade(value: float, scale: float) -> tuple[tuple[int, int, int], float]:
    """(colour, opacity in 0..1) for a value."""
    return (POSITIVE if value >= 0 else NEGATIVE), min(abs(value) / scale, 1.0) if scale else 0.0


def _walk(text: str, parent_id: str, start: int, end: int, by_parent: dict, wrap: Callable[[dict, str], str], plain: Callable[[str], str]) -> str:
    """Render text[start:end], wrapping every child unit of `parent_id` (recursively) with `wrap`."""
    pieces, cursor = [], start
    for child in by_parent.get(parent_id, []):
        if child["start"] < cursor or child["end"] > end:
            continue
        pieces.append(plain(text[cursor:child["start"]]))
        pieces.append(wrap(child, _walk(text, child["id"], child["start"], child["end"], by_parent, wrap, plain)))
        cursor = child["end"]
    pieces.append(plain(text[cursor:end]))
    return "".join(pieces)


def ranked_documents(explanation: dict, documents: Sequence[dict]) -> list[tuple[int, dict | None]]:
    """Document indices with their document-level feature, most supporting first (prompt order without one)."""
    by_doc = {f["doc"]: f for level in explanation["levels"] if level["level"] == "document" for f in level["features"]}
    order = sorted(range(len(documents)), key=lambda i: -by_doc[i]["value"] if i in by_doc else i)
    return [(i, by_doc.get(i)) for i in order]


def _document_body(explanation: dict, documents: Sequence[dict], index: int, wrap, plain) -> str:
    text = documents[index]["text"]
    by_parent = _children([f for level in explanation["levels"] for f in level["features"] if f["doc"] == index])
    # The top units hang from the root, or from the document's id when there is no document level.
    top = "root" if "root" in by_parent else f"d{index}"
    return _walk(text, top, 0, len(text), by_parent, wrap, plain)


def _stderr(value: float | None, sampled: bool = True) -> str:
    """Gradient methods sample nothing: their standard error (NaN, null in JSON) reads 'n/a'; an error
    the samples cannot determine (inf, null in JSON: too few for the unit's game) reads 'unknown'."""
    if value is None:
        return "unknown" if sampled else "n/a"
    if math.isnan(value):
        return "n/a"
    return "unknown" if math.isinf(value) else f"{value:.4f}"


def _sampled(explanation: dict) -> bool:
    """Whether the values were sampled (coalition estimators) rather than computed from gradients."""
    return "gradients" not in (explanation.get("extras") or {})


def _label(feature: dict, sampled: bool = True) -> str:
    return f"{feature['id']}: {feature['value']:+.4f} ± {_stderr(feature['stderr'], sampled)}"


def top_features(level: dict, count: int) -> list[dict]:
    """The level's `count` units of largest |value|, most important first."""
    return sorted(level["features"], key=lambda f: -abs(f["value"]))[:count]


def short(text: str, width: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# ---- terminal -------------------------------------------------------------------------------------------


def _ansi(colour: tuple[int, int, int], alpha: float, text: str) -> str:
    if alpha < 0.05:
        return text
    r, g, b = (round(255 - (255 - c) * alpha * 0.85) for c in colour)
    return f"\x1b[48;2;{r};{g};{b}m\x1b[30m{text}\x1b[0m"


def terminal_level(level, colour: bool, top: int = 8) -> str:
    """One finished level (a longshap.v1.Level message): its most important units with values, shaded."""
    scale = max((abs(f.value) for f in level.features), default=0.0) or 1.0
    lines = [
        f"== {level.level} level: {len(level.features)} units, {level.evaluations} evaluations, "
        f"{level.forward_tokens} forwarded + {level.reused_tokens} reused tokens, {level.wall_seconds:.1f} s"
    ]
    for feature in sorted(level.features, key=lambda f: -abs(f.value))[:top]:
        text = " ".join(feature.text.split())
        text = text if len(text) <= 70 else text[:69] + "…"
        if level.level == "document" and feature.title:
            text = f"[{feature.title}] {text}"
        if colour:
            text = _ansi(*shade(feature.value, scale), text)
        mark = "▶" if feature.expanded else " "
        lines.append(f"  {mark} {feature.id:<10} {feature.value:+9.4f} ± {_stderr(feature.stderr)}  {text}")
    if level.unsettled:
        lines.append(f"  not settled within the budget (rank or expansion): {', '.join(level.unsettled)}")
    return "\n".join(lines)


def terminal_view(explanation: dict, documents: Sequence[dict], colour: bool) -> str:
    """Documents ranked, each with its sentences and words shaded in place."""
    scales, levels = _scales(explanation), _level_of(explanation)

    def wrap(feature: dict, inner: str) -> str:
        if not colour or "\x1b" in inner:  # a finer unit already carries the colour
            return inner
        return _ansi(*shade(feature["value"], scales[levels[feature["id"]]]), inner)

    lines = [f"answer: {explanation['answer']!r}  (value {explanation['value_function']}, total effect {explanation['total_effect']:+.4f})"]
    if explanation.get("self_check"):
        lines.append(blend_summary(explanation["self_check"]))
    for index, feature in ranked_documents(explanation, documents):
        title = documents[index].get("title") or f"document {index}"
        score = f"{feature['value']:+.4f} ± {_stderr(feature['stderr'], _sampled(explanation))}" if feature else ""
        lines.append(f"\n[d{index}] {title}  {score}")
        lines.append("  " + _document_body(explanation, documents, index, wrap, lambda s: s).replace("\n", " "))
    return "\n".join(lines)


def blend_summary(check: dict) -> str:
    """kv_mode blend's self-check in one line: kept or fallen back, and by how much the blend differed."""
    largest = "unknown" if check.get("max_difference") is None else f"{check['max_difference']:.3g}"
    mean = "unknown" if check.get("mean_difference") is None else f"{check['mean_difference']:.3g}"
    outcome = f"fell back to exact: {check['reason']}" if check["fallback"] else "kept"
    return (f"kv blend ({check['recompute']:g} of each document recomputed) {outcome}; on {check['coalitions']} checked coalitions "
            f"|blend - exact| / |total effect| was at most {largest}, {mean} on average (tolerance {check['tolerance']:g})")


# ---- HTML -----------------------------------------------------------------------------------------------

_STYLE = """
body{font:15px/1.6 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#111}
h1{font-size:1.3rem} .meta{color:#555} .doc{border:1px solid #ddd;border-radius:8px;padding:.6rem 1rem;margin:1rem 0}
.doc h2{font-size:1rem;margin:.2rem 0} .score{font-family:monospace;color:#333;font-weight:normal}
.hl{border-radius:3px;cursor:help} .hl .hl{padding:0 1px} .key span{padding:0 .4rem;border-radius:3px}
h2.part{font-size:1.1rem;margin-top:2rem} .chart text{font:12px system-ui,sans-serif}
table.tokens{border-collapse:collapse;font:13px/1.3 system-ui,sans-serif;margin:.5rem 0 1.5rem}
table.tokens th,table.tokens td{border:1px solid #ddd;padding:.2rem .45rem;text-align:right;font-variant-numeric:tabular-nums}
table.tokens th.unit{text-align:left;font-weight:normal;max-width:22rem}
"""
TOP_UNITS = 10
BAR_WIDTH, BAR_HEIGHT, LABEL_WIDTH = 300, 22, 320


def _rgba(value: float, scale: float, strength: float = 0.6) -> str:
    (r, g, b), alpha = shade(value, scale)
    return f"rgba({r},{g},{b},{alpha * strength:.3f})"


def bar_chart(level: dict) -> str:
    """Inline SVG: the level's top units by |value|, bars to the right (raise) or left (lower) of zero."""
    top = top_features(level, TOP_UNITS)
    scale = max((abs(f["value"]) for f in top), default=0.0) or 1.0
    zero = LABEL_WIDTH + BAR_WIDTH / 2
    rows = []
    for i, feature in enumerate(top):
        y = i * BAR_HEIGHT
        length = abs(feature["value"]) / scale * (BAR_WIDTH / 2 - 4)
        x = zero if feature["value"] >= 0 else zero - length
        colour = "rgb({},{},{})".format(*(POSITIVE if feature["value"] >= 0 else NEGATIVE))
        rows.append(
            f'<g class="bar" data-id="{feature["id"]}"><title>{html.escape(_label(feature))}</title>'
            f'<text x="{LABEL_WIDTH - 6}" y="{y + 15}" text-anchor="end">{html.escape(short(feature["text"]))}</text>'
            f'<rect x="{x:.1f}" y="{y + 3}" width="{max(length, 1):.1f}" height="{BAR_HEIGHT - 6}" fill="{colour}"/>'
            f'<text x="{zero + BAR_WIDTH / 2 + 4}" y="{y + 15}">{feature["value"]:+.4f}</text></g>'
        )
    height = max(1, len(top)) * BAR_HEIGHT
    width = LABEL_WIDTH + BAR_WIDTH + 80
    return (
        f'<svg class="chart" data-level="{level["level"]}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="top {level["level"]} units">'
        f'<line x1="{zero}" y1="0" x2="{zero}" y2="{height}" stroke="#888"/>{"".join(rows)}</svg>'
    )


def token_table(explanation: dict, level: dict) -> str:
    """Output-token x input-unit heatmap: the level's top units, one column per answer token, then their sum."""
    tokens = explanation.get("answer_tokens")
    top = [f for f in top_features(level, TOP_UNITS) if f.get("values_by_token")]
    if not tokens or not top:
        return ""
    scale = max(abs(v) for f in top for v in f["values_by_token"]) or 1.0
    head = "".join(f"<th>{html.escape(repr(token)[1:-1])}</th>" for token in tokens)
    rows = []
    for feature in top:
        cells = "".join(
            f'<td style="background:{_rgba(v, scale)}" title="{html.escape(feature["id"])} → {html.escape(token)}">{v:+.3f}</td>'
            for v, token in zip(feature["values_by_token"], tokens)
        )
        rows.append(
            f'<tr data-id="{feature["id"]}"><th class="unit" title="{html.escape(feature["text"])}">{html.escape(short(feature["text"]))}</th>'
            f'{cells}<td><b>{feature["value"]:+.3f}</b></td></tr>'
        )
    return (
        f'<table class="tokens" data-level="{level["level"]}"><thead><tr><th class="unit">{level["level"]} \\ answer token</th>{head}<th>Σ</th></tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table>'
    )


def charts(explanation: dict) -> str:
    """Per level: the bar chart of its top units, and the token table when the value has per-token columns."""
    parts = []
    for level in explanation["levels"]:
        parts.append(f'<h2 class="part">Top {level["level"]} units ({level["method"]})</h2>{bar_chart(level)}')
        table = token_table(explanation, level)
        if table:
            parts.append(f'<h2 class="part">{level["level"].capitalize()} units × answer tokens</h2>{table}')
    return "".join(parts)


def _css_background(feature: dict, scale: float) -> str:
    (r, g, b), alpha = shade(feature["value"], scale)
    return f"background:rgba({r},{g},{b},{alpha * 0.6:.3f})"


def html_report(explanation: dict, documents: Sequence[dict], question: str = "") -> str:
    """A self-contained page: documents ranked, sentences and words highlighted, values on hover."""
    scales, levels, sampled = _scales(explanation), _level_of(explanation), _sampled(explanation)

    def wrap(feature: dict, inner: str) -> str:
        level = levels[feature["id"]]
        if level == "document":  # shown by the section's border and score instead
            return inner
        return (
            f'<span class="hl {level}" data-id="{feature["id"]}" data-value="{feature["value"]:.6g}" '
            f'style="{_css_background(feature, scales[level])}" title="{html.escape(_label(feature, sampled))}">{inner}</span>'
        )

    sections = []
    for rank, (index, feature) in enumerate(ranked_documents(explanation, documents), 1):
        title = html.escape(documents[index].get("title") or f"document {index}")
        score = f' <span class="score">{html.escape(_label(feature, sampled))}</span>' if feature else ""
        style = f' style="border-left:6px solid rgba{(*shade(feature["value"], scales["document"])[0], 0.8)}"' if feature else ""
        body = _document_body(explanation, documents, index, wrap, html.escape)
        sections.append(f'<section class="doc" data-doc="{index}"{style}><h2>#{rank} [d{index}] {title}{score}</h2><p>{body}</p></section>')
    stats = explanation["stats"]
    meta = (
        f"value function {explanation['value_function']}, total effect {explanation['total_effect']:+.4f}; "
        f"{stats.get('evaluations', 0)} evaluations, {stats.get('forward_tokens', 0)} forwarded tokens, {stats.get('wall_seconds', 0):.1f} s"
    )
    if explanation.get("self_check"):
        meta += "; " + blend_summary(explanation["self_check"])
    completeness = (explanation.get("extras") or {}).get("gradients", {}).get("completeness")
    if completeness:
        check = completeness.get("sequence") or {"attribution_sum": completeness["attribution_sum"][0],
                                                 "effect": completeness["f_input"][0] - completeness["f_baseline"][0]}
        meta += (f"; Integrated Gradients ({completeness['steps']} steps): attributions sum to {check['attribution_sum']:+.4f}, "
                 f"f(input) − f(baseline) = {check['effect']:+.4f}")
    heading = f"<p><b>Question:</b> {html.escape(question)}</p>" if question else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>LongSHAP explanation</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>LongSHAP explanation</h1>{heading}<p><b>Answer:</b> <span id=\"answer\">{html.escape(explanation['answer'])}</span></p>"
        f"<p class=\"meta\">{html.escape(meta)}</p>"
        '<p class="key"><span style="background:rgba(22,163,74,.5)">raises the answer</span> '
        '<span style="background:rgba(220,38,38,.5)">lowers it</span> — hover a highlight for its value ± standard error</p>'
        + "".join(sections)
        + charts(explanation)
        + "</body></html>\n"
    )


def progress_bar(level: str, done: int, planned: int, width: int = 30) -> str:
    filled = min(width, round(width * done / planned)) if planned else width
    return f"{level:>9} [{'#' * filled}{'.' * (width - filled)}] {done}/{planned} evaluations"


class LiveView:
    """Prints the answer and each finished level as they stream in; a progress bar on a terminal."""

    def __init__(self, out: TextIO, err: TextIO, colour: bool, show_levels: bool, show_progress: bool) -> None:
        self.out, self.err = out, err
        self.colour, self.show_levels, self.show_progress = colour, show_levels, show_progress
        self.started = time.perf_counter()
        self.first_level_at: float | None = None
        self.last_event_at: float | None = None
        self.explanation: dict | None = None

    def handle(self, event: pb.ExplainEvent) -> None:
        self.last_event_at = time.perf_counter() - self.started
        kind = event.WhichOneof("event")
        if kind == "answer" and self.show_levels:
            print(f"answer ({event.answer.source}): {event.answer.answer!r}", file=self.out, flush=True)
        elif kind == "level_start":
            self._bar(progress_bar(event.level_start.level, 0, event.level_start.planned_evaluations))
        elif kind == "progress":
            self._bar(progress_bar(event.progress.level, event.progress.evaluations, event.progress.planned_evaluations))
        elif kind == "level":
            self._bar("")
            if self.first_level_at is None:
                self.first_level_at = self.last_event_at
            if self.show_levels:
                print(f"{terminal_level(event.level.level, self.colour)}\n   (at +{self.last_event_at:.1f} s)", file=self.out, flush=True)
        elif kind == "done":
            self.explanation = json.loads(event.done.explanation_json)

    def _bar(self, text: str) -> None:
        if self.show_progress:
            self.err.write(f"\r\x1b[2K{text}")
            self.err.flush()

    def timings(self) -> str:
        first = f"{self.first_level_at:.1f} s" if self.first_level_at is not None else "-"
        return f"first level event after {first}, last event after {self.last_event_at or 0:.1f} s"
