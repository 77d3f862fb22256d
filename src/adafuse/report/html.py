"""A self-contained HTML page for one generation trace or a whole evaluation directory.

Everything the page needs is inline (CSS, a few lines of JS, SVG charts); a Content-Security-Policy forbids any
network access and allows only the one inline script, by its hash. All model and data text is HTML-escaped:
model output is untrusted and must never become markup.

What it shows, per generation:

* the answer, each committed span coloured by the member(s) whose candidate won the round (stripes when
  several members proposed the winning string, as on the fast path); text a stop string or the token budget
  cut off afterwards is shown struck through;
* on hover, focus or click of a span: that round's candidates with every member's score (normalised NLL, lower
  is better) and the combined score, and each member's proposal (margins, confident or branched);
* each member's margin over the rounds as a small SVG chart, with the ``theta`` line;
* the telemetry (per member forward calls and tokens, rounds, fast-path rate, wall time) and the config.

An evaluation directory (``run.json``, ``predictions.jsonl``, ``summary.json``) becomes a summary, a table of
items with their correctness linking to each item's section, and each item's trace where one was recorded:
either a ``trace`` key in its predictions line (a :meth:`Result.to_dict`) or a line ``{"index": i, "result":
{...}}`` in ``traces.jsonl`` beside it (a later line for an index replaces an earlier one, as a retried item's).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from adafuse.errors import DataError
from adafuse.result import Result, Round

PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"
MANIFEST = "run.json"
TRACES = "traces.jsonl"

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#E69F00", "#56B4E9", "#009E73", "#CC79A7", "#0072B2", "#D55E00", "#F0E442", "#999999")
_UNKNOWN = "#BBBBBB"
#: the answer's span backgrounds: the member colours at 40% opacity, under dark text.
_TINT = "66"


# ------------------------------------------------------------------------------------------------ entry points


def build_report(source: Path | str, title: str | None = None) -> str:
    """The HTML page for a Result JSON file (``adafuse generate --json``) or an evaluation directory."""
    path = Path(source)
    if path.is_dir():
        return eval_report(path, title)
    if not path.is_file():
        raise DataError(f"{path}: no such file or directory")
    return result_report(load_result(path), title or path.name)


def write_report(source: Path | str, out: Path | str, title: str | None = None) -> Path:
    page = build_report(source, title)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    return target


def load_result(path: Path) -> Result:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a JSON result ({exc})") from None
    return _result_from(data, str(path))


def _result_from(data: Any, where: str) -> Result:
    if not isinstance(data, dict) or "text" not in data or "telemetry" not in data:
        raise DataError(f"{where}: not an adafuse result (expected the object `adafuse generate --json` prints)")
    try:
        return Result.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: malformed result ({exc!r})") from None


def result_report(result: Result, title: str = "adafuse trace") -> str:
    body = f'<h1>{escape(title)}</h1>\n<p class="sub">{escape(_describe(result))}</p>\n'
    body += render_result(result, "t")
    return page(title, body)


# --------------------------------------------------------------------------------------------- one generation


def render_result(result: Result, anchor: str) -> str:
    """The HTML for one generation; ``anchor`` prefixes every id so several can share a page."""
    members = _member_names(result)
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(members)}
    parts = [
        '<div class="gen">',
        _legend(members, colours),
        # One string: the answer keeps its whitespace (pre-wrap), so no newline may sit between the spans.
        f'<div class="answer" aria-label="answer">{_answer_spans(result, anchor, colours)}</div>',
        '<p class="hint">Hover, focus or click a span for its round; click pins it. '
        "<code>·</code> is a space, <code>↵</code> a newline, <code>∎</code> the end token.</p>",
        _margin_charts(result, members, colours),
        _telemetry(result),
        _config(result),
        f'<details class="rounds"><summary>All {len(result.rounds)} rounds</summary>',
        *(_round_section(rnd, f"{anchor}-r{rnd.index}", members, colours) for rnd in result.rounds),
        "</details>",
        "</div>",
    ]
    return "\n".join(parts)


def _member_names(result: Result) -> list[str]:
    names = list(result.models) or [m.name for m in result.telemetry.members]
    for rnd in result.rounds:  # a trace may name members the header does not (hand-made or old files)
        for name in [p.member for p in rnd.proposals] + [n for c in rnd.candidates for n in c.scores]:
            if name not in names:
                names.append(name)
    return names


def _describe(result: Result) -> str:
    tel = result.telemetry
    return (
        f"{result.method} · {', '.join(result.models) or 'unknown models'} · {tel.rounds} rounds "
        f"({tel.fast_path_rounds} fast path) · {tel.output_tokens} tokens · finish: {result.finish_reason} · "
        f"{tel.wall_seconds:.2f}s"
    )


def _legend(members: Sequence[str], colours: dict[str, str]) -> str:
    items = "".join(f"<li>{_dot(colours[m])}{escape(m)}</li>" for m in members)
    return f'<ul class="legend" aria-label="members">{items}<li>{_stripes(members, colours, "dot")} agreed</li></ul>'


def _dot(colour: str) -> str:
    return f'<span class="dot" style="background:{colour}"></span>'


def _stripes(names: Sequence[str], colours: dict[str, str], cls: str) -> str:
    return f'<span class="{cls}" style="background:{_fill(names, colours)}"></span>'


def _fill(names: Sequence[str], colours: dict[str, str], alpha: str = "") -> str:
    """One colour, or diagonal stripes of every proposer's colour; ``alpha`` (two hex digits) tints them so
    that text on top stays readable."""
    cs = [colours.get(n, _UNKNOWN) + alpha for n in names] or [_UNKNOWN + alpha]
    if len(cs) == 1:
        return cs[0]
    width = 7
    stops = ",".join(f"{c} {i * width}px {(i + 1) * width}px" for i, c in enumerate(cs))
    return f"repeating-linear-gradient(135deg,{stops})"


@dataclass
class _Segment:
    rnd: Round
    kept: str
    cut: str


def _segments(result: Result) -> list[_Segment] | None:
    """Each round's committed text, split into what the final text kept and what a stop or budget cut off.
    None when the rounds do not spell the final text (a trace edited by hand, or one without rounds)."""
    segments = []
    pos = 0
    text = result.text
    for rnd in result.rounds:
        piece = rnd.committed
        keep = max(0, min(len(piece), len(text) - pos))
        if text[pos : pos + keep] != piece[:keep]:
            return None
        segments.append(_Segment(rnd, piece[:keep], piece[keep:]))
        pos += keep
    return segments if pos == len(text) else None


def _answer_spans(result: Result, anchor: str, colours: dict[str, str]) -> str:
    segments = _segments(result)
    if segments is None:
        note = "" if not result.rounds else '<p class="warn">The rounds do not spell the final text.</p>'
        return f'<span class="plain">{_shown(result.text)}</span>{note}'
    out = []
    for seg in segments:
        rnd = seg.rnd
        winner = rnd.candidates[rnd.chosen] if 0 <= rnd.chosen < len(rnd.candidates) else None
        proposers = winner.proposers if winner else []
        tip = f"round {rnd.index} · won by {', '.join(proposers) or 'unknown'}"
        if winner is not None and winner.combined is not None:
            tip += f" · combined {winner.combined:.3f}"
        if rnd.fast_path:
            tip += " · fast path"
        shown = _shown(seg.kept)
        if winner is not None and winner.eos and not seg.cut:
            shown += '<span class="eos">∎</span>'
        if seg.cut:
            tip += f" · cut off afterwards: {seg.cut!r}"
            shown += f'<s class="cut">{_shown(seg.cut)}</s>'
        if not shown:
            shown = '<span class="empty">∅</span>'
        out.append(
            f'<span class="seg" tabindex="0" role="button" data-round-ref="{escape(anchor)}-r{rnd.index}" '
            f'style="background:{_fill(proposers, colours, _TINT)}" title="{escape(tip)}">{shown}</span>'
        )
    return "".join(out)


def _shown(text: str) -> str:
    """Escaped text for the answer: newlines keep their line break and get a visible mark."""
    return escape(text).replace("\n", '<span class="nl">↵</span>\n')


def _visible(text: str) -> str:
    """Escaped text for tables, where whitespace must be seen: spaces as ·, newlines as ↵, tabs as ⇥."""
    if text == "":
        return '<span class="empty">∅</span>'
    return escape(text.replace(" ", "·").replace("\n", "↵").replace("\t", "⇥"))


def _round_section(rnd: Round, ident: str, members: Sequence[str], colours: dict[str, str]) -> str:
    head = f"Round {rnd.index} · unit {escape(rnd.unit)}"
    if rnd.fast_path:
        head += " · fast path: every member proposed the same string, no scoring"
    rows = []
    for j, cand in enumerate(rnd.candidates):
        best_marks = []
        for m in members:
            score = cand.scores.get(m)
            if score is None:
                best_marks.append("<td>-</td>")
                continue
            best = min((c.scores[m] for c in rnd.candidates if m in c.scores and not c.bounded), default=score)
            cls = ' class="best"' if score == best and not cand.bounded and len(rnd.candidates) > 1 else ""
            bound = "≥" if cand.bounded else ""
            best_marks.append(f"<td{cls}>{bound}{_num(score)}</td>")
        proposers = "".join(
            f'<span title="{escape(p)}">{_dot(colours.get(p, _UNKNOWN))}</span>' for p in cand.proposers
        )
        combined = ("≥" if cand.bounded else "") + _num(cand.combined) if cand.combined is not None else "-"
        eos = ' <span class="eos" title="ends with the end token">∎</span>' if cand.eos else ""
        chosen = ' class="chosen"' if j == rnd.chosen else ""
        rows.append(
            f"<tr{chosen}><td><code>{_visible(cand.text)}</code>{eos}</td><td>{proposers}</td>"
            f"{''.join(best_marks)}<td>{combined}</td></tr>"
        )
    member_heads = "".join(f"<th>{_dot(colours[m])}{escape(m)}</th>" for m in members)
    proposals = []
    for p in rnd.proposals:
        margins = ", ".join(_num(x) for x in p.margins) or "-"
        cands = " ".join(f"<code>{_visible(c)}</code>" for c in p.candidates)
        mode = "branched" if p.branched else "confident"
        proposals.append(
            f"<tr><td>{_dot(colours.get(p.member, _UNKNOWN))}{escape(p.member)}</td><td>{margins}</td>"
            f"<td>{mode}</td><td>{cands}</td></tr>"
        )
    return (
        f'<section class="round" id="{escape(ident)}"><h4>{head}</h4>'
        f"<p>Committed: <code>{_visible(rnd.committed)}</code></p>"
        '<table class="cands"><thead><tr><th>candidate</th><th>proposers</th>'
        f"{member_heads}<th>combined</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        '<p class="note">Scores are normalised NLL: lower is better; bold is each member\'s favourite; ≥ marks a '
        "candidate whose scoring stopped once it could no longer win (its scores are lower bounds).</p>"
        '<table class="props"><thead><tr><th>member</th><th>margins</th><th>mode</th><th>proposed</th></tr>'
        f"</thead><tbody>{''.join(proposals)}</tbody></table></section>"
    )


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if not math.isfinite(x):
        return escape(str(x))
    return f"{x:.3f}"


def _margin_charts(result: Result, members: Sequence[str], colours: dict[str, str]) -> str:
    theta = result.config.get("theta")
    theta = float(theta) if isinstance(theta, int | float) else None
    n = len(result.rounds)
    if n == 0:
        return ""
    charts = []
    w, h, pad = 260, 60, 6
    for m in members:
        # (x, y, round index, margin, branched); a round the member sat out leaves no point.
        points: list[tuple[float, float, int, float, bool]] = []
        for k, rnd in enumerate(result.rounds):
            prop = next((p for p in rnd.proposals if p.member == m), None)
            if prop is None or not prop.margins:
                continue
            margin = prop.margins[0]
            x = pad + (w - 2 * pad) * (k / (n - 1) if n > 1 else 0.5)
            y = h - pad - (h - 2 * pad) * min(1.0, max(0.0, margin))
            points.append((x, y, rnd.index, margin, prop.branched))
        svg = [f'<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img">']
        svg.append(f"<title>{escape(m)}: margin p(1)-p(2) at each round's first token</title>")
        svg.append(f'<rect x="0" y="0" width="{w}" height="{h}" class="frame"/>')
        if theta is not None:
            ty = h - pad - (h - 2 * pad) * theta
            svg.append(f'<line x1="{pad}" x2="{w - pad}" y1="{ty:.1f}" y2="{ty:.1f}" class="theta"/>')
        colour = colours[m]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, *_ in points)
            svg.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for x, y, index, margin, branched in points:
            fill = "#fff" if branched else colour
            label = f"round {index}: margin {margin:.3f} ({'branched' if branched else 'confident'})"
            svg.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{fill}" stroke="{colour}" stroke-width="1.5">'
                f"<title>{escape(label)}</title></circle>"
            )
        svg.append("</svg>")
        caption = f"<figcaption>{_dot(colour)}{escape(m)}</figcaption>"
        charts.append(f'<figure class="margin">{"".join(svg)}{caption}</figure>')
    theta_note = f" The dashed line is theta = {theta:g}." if theta is not None else ""
    return (
        '<div class="charts"><h3>Margins over the rounds</h3>'
        f'<p class="note">Filled: confident (expanded); hollow: branched.{escape(theta_note)}</p>'
        f"{''.join(charts)}</div>"
    )


def _telemetry(result: Result) -> str:
    tel = result.telemetry
    rows = "".join(
        f"<tr><td>{escape(m.name)}</td><td>{m.forward_calls}</td><td>{m.tokens_evaluated}</td>"
        f"<td>{m.tokens_reused}</td><td>{m.prompt_tokens}</td></tr>"
        for m in tel.members
    )
    fast = tel.fast_path_rounds / tel.rounds if tel.rounds else 0.0
    dropped = "".join(f"<li>{escape(k)}: {escape(v)}</li>" for k, v in tel.dropped.items())
    return (
        '<div class="telemetry"><h3>Telemetry</h3>'
        f"<p>{tel.rounds} rounds · {tel.fast_path_rounds} fast path ({fast:.0%}) · {tel.fused_rounds} fused · "
        f"{tel.output_tokens} output tokens · {tel.tokens_evaluated} tokens evaluated · "
        f"{tel.wall_seconds:.2f}s · finish: {escape(result.finish_reason)}</p>"
        "<table><thead><tr><th>member</th><th>forward calls</th><th>tokens evaluated</th><th>tokens reused</th>"
        f"<th>prompt tokens</th></tr></thead><tbody>{rows}</tbody></table>"
        + (f"<p>Dropped members:</p><ul>{dropped}</ul>" if dropped else "")
        + "</div>"
    )


def _config(result: Result) -> str:
    if not result.config:
        return ""
    cells = "".join(
        f"<tr><th>{escape(str(k))}</th><td><code>{escape(json.dumps(v, ensure_ascii=False))}</code></td></tr>"
        for k, v in result.config.items()
    )
    return f'<details class="config"><summary>Decoding config</summary><table>{cells}</table></details>'


# ------------------------------------------------------------------------------------------ evaluation runs


def load_eval_dir(path: Path) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], dict[int, Result]]:
    """``run.json``, ``summary.json`` (either may be missing: a run in progress), the prediction records in
    index order, and the traces by item index."""
    pred_path = path / PREDICTIONS
    if not pred_path.is_file():
        raise DataError(f"{path}: not an evaluation directory (no {PREDICTIONS})")
    manifest = _read_json(path / MANIFEST)
    summary = _read_json(path / SUMMARY)
    records: dict[int, dict[str, Any]] = {}
    traces: dict[int, Result] = {}
    for lineno, rec in _jsonl(pred_path):
        if not isinstance(rec.get("index"), int):
            raise DataError(f"{pred_path}:{lineno}: a record without an integer index")
        records[rec["index"]] = rec  # a retried item's later line replaces the earlier one
        trace = rec.get("trace")
        if isinstance(trace, dict):
            traces[rec["index"]] = _result_from(trace, f"{pred_path}:{lineno}")
    trace_path = path / TRACES
    if trace_path.is_file():
        for lineno, rec in _jsonl(trace_path, lenient=True):
            if isinstance(rec.get("index"), int) and isinstance(rec.get("result"), dict):
                traces[rec["index"]] = _result_from(rec["result"], f"{trace_path}:{lineno}")
    return manifest, summary, [records[i] for i in sorted(records)], traces


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def _jsonl(path: Path, lenient: bool = False) -> list[tuple[int, dict[str, Any]]]:
    """The JSON objects of a JSONL file. A torn last line (a run killed mid-write) is skipped; so is any bad
    line when ``lenient`` (traces are an aid to reading, and a resumed run may append after a torn one)."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    out = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if lenient or lineno == len(lines):
                continue
            raise DataError(f"{path}:{lineno}: not a JSON line") from None
        if isinstance(rec, dict):
            out.append((lineno, rec))
    return out


def eval_report(path: Path, title: str | None = None) -> str:
    manifest, summary, records, traces = load_eval_dir(path)
    info = summary or manifest
    task = info.get("task", path.name)
    method = info.get("label") or info.get("method", "?")
    heading = title or f"{task} · {method}"
    parts = [f"<h1>{escape(str(heading))}</h1>", _eval_summary(path, info, summary, records, traces)]
    parts.append(_items_table(records, traces))
    for rec in records:
        parts.append(_item_section(rec, traces.get(rec["index"])))
    return page(str(heading), "\n".join(parts))


def _eval_summary(
    path: Path, info: dict[str, Any], summary: dict[str, Any], records: list[dict[str, Any]], traces: dict
) -> str:
    models = ", ".join(str(m) for m in info.get("models", [])) or "?"
    lines = [f'<p class="sub">{escape(str(path))} · models: {escape(models)}</p>']
    if summary:
        metrics = " · ".join(f"{escape(str(k))} {_metric(v)}" for k, v in summary.get("metrics", {}).items())
        tel = summary.get("telemetry", {})
        tpo = tel.get("tokens_per_output_token")
        fast = _metric(tel.get("fast_path_rate"), pct=True)
        lines.append(
            f"<p><strong>{metrics}</strong> · n={escape(str(summary.get('n', len(records))))} · "
            f"errors {escape(str(summary.get('errors', 0)))} · fast path {fast} · "
            f"{_metric(tpo)} tokens evaluated per output token · {_metric(summary.get('wall_seconds'))}s</p>"
        )
    else:
        lines.append('<p class="warn">No summary.json: the run has not finished (or was interrupted).</p>')
    lines.append(f"<p>{len(traces)} of {len(records)} items have a trace.</p>")
    return "\n".join(lines)


def _metric(value: Any, pct: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else escape(str(value))
    return f"{value:.1%}" if pct else f"{value:.2f}"


def _correct_cell(rec: dict[str, Any]) -> str:
    if "error" in rec:
        return f'<td class="bad" title="{escape(str(rec["error"]))}">error</td>'
    value = rec.get("correct")
    if value is None:
        return "<td>-</td>"
    if value == 1:
        return '<td class="good">✓</td>'
    if value == 0:
        return '<td class="bad">✗</td>'
    return f"<td>{_metric(value)}</td>"


def _gold(rec: dict[str, Any]) -> str:
    gold = rec.get("gold")
    if isinstance(gold, list):
        return " | ".join(str(g) for g in gold)
    return "" if gold is None else str(gold)


def _items_table(records: list[dict[str, Any]], traces: dict[int, Result]) -> str:
    rows = []
    for rec in records:
        i = rec["index"]
        trace = "trace" if i in traces else "no trace"
        rows.append(
            f'<tr><td><a href="#item-{i}">{i}</a></td>{_correct_cell(rec)}'
            f'<td class="q">{escape(str(rec.get("question", "")))}</td>'
            f"<td>{escape(_gold(rec))}</td><td><code>{_visible(str(rec.get('prediction', '')))}</code></td>"
            f"<td>{escape(str(rec.get('finish_reason', '')))}</td><td>{escape(str(rec.get('rounds', '')))}</td>"
            f'<td><a href="#item-{i}">{trace}</a></td></tr>'
        )
    return (
        '<table class="items"><thead><tr><th>#</th><th>correct</th><th>question</th><th>gold</th>'
        "<th>prediction</th><th>finish</th><th>rounds</th><th></th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _item_section(rec: dict[str, Any], trace: Result | None) -> str:
    i = rec["index"]
    body = [
        f'<section class="item" id="item-{i}"><h2>Item {i} <a class="back" href="#top">↑ items</a></h2>',
        f'<p class="q"><strong>Question:</strong> {escape(str(rec.get("question", "")))}</p>',
        f"<p><strong>Gold:</strong> {escape(_gold(rec))} · <strong>Prediction:</strong> "
        f"<code>{_visible(str(rec.get('prediction', '')))}</code></p>",
    ]
    if "error" in rec:
        body.append(f'<p class="warn">Error: {escape(str(rec["error"]))}</p>')
    if trace is not None:
        body.append(render_result(trace, f"item{i}"))
    else:
        body.append(
            f'<p class="note">No trace recorded for this item (raw output: <code>{_visible(str(rec.get("raw", "")))}'
            "</code>).</p>"
        )
    body.append("</section>")
    return "\n".join(body)


# ------------------------------------------------------------------------------------------------ the page

_CSS = """
:root{--ink:#1d1d1f;--muted:#6b6b70;--line:#ddd;--bg:#fff;--chosen:#fff4c2}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:var(--bg)}
.layout{display:grid;grid-template-columns:minmax(0,1fr) minmax(320px,42%);gap:0}
main{padding:16px 24px;min-width:0}
aside{position:sticky;top:0;height:100vh;overflow:auto;border-left:1px solid var(--line);padding:12px 16px;
background:#fafafa}
aside h2{font-size:14px;margin:0 0 8px;color:var(--muted)}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px}h3{font-size:14px;margin:18px 0 6px}
h4{font-size:13px;margin:6px 0}
.sub,.note,.hint{color:var(--muted);font-size:12px}.warn{color:#a33}
.legend{list-style:none;padding:0;margin:8px 0;display:flex;gap:14px;flex-wrap:wrap}
.dot{display:inline-block;width:11px;height:11px;border-radius:50%;margin-right:5px;vertical-align:-1px;
border:1px solid rgba(0,0,0,.25)}
.answer{font:16px/1.9 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;
word-break:break-word;padding:10px 12px;border:1px solid var(--line);border-radius:6px;background:#fff}
.seg{border-radius:3px;padding:3px 0;cursor:pointer;box-shadow:inset 0 -2px 0 rgba(0,0,0,.35);
margin-right:1px}
.seg:hover,.seg:focus,.seg.active{outline:2px solid var(--ink);outline-offset:1px}
.seg.pinned{outline:3px solid #000}
.nl,.eos,.empty{color:var(--muted);font-size:.8em}.cut{color:#a33;opacity:.8}
table{border-collapse:collapse;margin:6px 0;font-size:12px}
th,td{border:1px solid var(--line);padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3;font-weight:600}
td.best{font-weight:700}tr.chosen td{background:var(--chosen)}
td.good{color:#070;font-weight:700}td.bad{color:#a00;font-weight:700}
table.items td.q{max-width:420px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;background:#f4f4f4;
padding:0 3px;border-radius:3px}
.charts figure{display:inline-block;margin:0 12px 8px 0}
.charts figcaption{font-size:12px}
svg.chart .frame{fill:#fff;stroke:var(--line)}svg.chart .theta{stroke:#888;stroke-dasharray:4 3}
section.item{border-top:2px solid var(--line);margin-top:24px}
.back{font-size:12px;font-weight:400;margin-left:8px}
details{margin:8px 0}summary{cursor:pointer;color:var(--muted)}
section.round{border:1px solid var(--line);border-radius:6px;padding:6px 10px;margin:8px 0;background:#fff}
@media (max-width:900px){.layout{grid-template-columns:1fr}aside{position:static;height:auto;border-left:0;
border-top:1px solid var(--line)}}
"""

# Shows the round behind a span in the side panel (a copy of its static section, so the script never builds
# markup from model text), and marks the page once wired up so a headless browser can see the script ran.
_JS = """
(function () {
  var panel = document.getElementById('panel-body');
  var segs = document.querySelectorAll('.seg[data-round-ref]');
  var pinned = null, active = null;
  function show(seg) {
    var src = document.getElementById(seg.getAttribute('data-round-ref'));
    if (!src || !panel) { return; }
    var copy = src.cloneNode(true);
    copy.removeAttribute('id');
    panel.replaceChildren(copy);
    if (active) { active.classList.remove('active'); }
    active = seg;
    seg.classList.add('active');
  }
  function pin(seg) {
    if (pinned) { pinned.classList.remove('pinned'); }
    pinned = (pinned === seg) ? null : seg;
    if (pinned) { pinned.classList.add('pinned'); }
    show(seg);
  }
  segs.forEach(function (seg) {
    seg.addEventListener('mouseenter', function () { if (!pinned) { show(seg); } });
    seg.addEventListener('focus', function () { if (!pinned) { show(seg); } });
    seg.addEventListener('click', function () { pin(seg); });
    seg.addEventListener('keydown', function (e) {
      if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); pin(seg); }
    });
  });
  if (segs.length) { show(segs[0]); }
  document.body.setAttribute('data-report-ready', String(segs.length));
})();
"""


def page(title: str, body: str) -> str:
    """The whole document: inline CSS and script, and a policy that allows nothing else (no network)."""
    digest = base64.b64encode(hashlib.sha256(_JS.encode("utf-8")).digest()).decode("ascii")
    csp = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; img-src data:"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n"
        '<body id="top"><div class="layout"><main>\n'
        f"{body}\n"
        '</main><aside aria-live="polite"><h2>Round details</h2><div id="panel-body">'
        '<p class="note">Hover or click a span of an answer.</p></div></aside></div>\n'
        f"<script>{_JS}</script>\n</body></html>\n"
    )
