"""One self-contained HTML page: inline CSS, images as base64 data URIs, no script, no
network. Every piece of text from the run is escaped."""

from __future__ import annotations

import base64
from collections import defaultdict
from datetime import UTC, datetime
from html import escape

from gpt2cli.report.history import SampleView
from gpt2cli.report.load import RunData
from gpt2cli.report.panels import Panel

# Evals shown in the samples section: a long run has hundreds; the first ones and the
# latest ones tell the story (the rest are counted, not dropped silently).
MAX_SAMPLE_STEPS = 40

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1160px;
       padding: 16px 24px 48px; color: #1d1d1f; background: #fff; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 1.8em; }
h3 { font-size: 1.0em; margin: 1.2em 0 0.4em; }
.status { color: #555; margin-top: 0; }
table.summary { border-collapse: collapse; font-size: 0.92em; }
table.summary td { padding: 2px 14px 2px 0; vertical-align: top; }
table.summary td:first-child { color: #666; }
p.what { color: #444; font-size: 0.95em; }
img.figure { max-width: 100%; border: 1px solid #eee; }
ul.missing li { color: #8a5a00; }
ul.missing { background: #fff8e6; border-left: 4px solid #f0b400; padding: 6px 6px 6px 28px; }
ul.facts { font-size: 0.93em; }
ul.problems li { color: #a00; }
nav a { margin-right: 12px; }
.sample { border: 1px solid #e4e4e4; border-radius: 4px; margin: 6px 0; padding: 6px 10px; }
.sample .prompt { font-weight: 600; }
.sample .text { white-space: pre-wrap; font-family: ui-monospace, Menlo, Consolas, monospace;
                font-size: 0.85em; margin: 4px 0; word-break: break-word; }
.sample .figs { color: #666; font-size: 0.82em; }
mark.loop { background: #ffd0d0; border-bottom: 2px solid #d00; padding: 0 1px; }
.loops { color: #a00; }
"""


def _img(panel: Panel) -> str:
    data = base64.b64encode(panel.png).decode("ascii")
    return f'<img class="figure" src="data:image/png;base64,{data}" alt="{escape(panel.alt)}">'


def _list(items: list[str], cls: str) -> str:
    if not items:
        return ""
    return f'<ul class="{cls}">' + "".join(f"<li>{escape(x)}</li>" for x in items) + "</ul>"


def _marked(view: SampleView) -> str:
    """The sample's text, escaped, with each loop's span in a <mark>."""
    out, pos = [], 0
    spans = sorted(zip(view.spans, view.loops, strict=True), key=lambda s: s[0][0])
    for (a, b), loop in spans:
        if a < pos or b <= a:
            continue  # an empty span (a loop cut off before the text) or an overlap
        out.append(escape(view.text[pos:a]))
        title = f"{loop.period}-token unit repeated {loop.repeats} times"
        out.append(f'<mark class="loop" title="{escape(title)}">{escape(view.text[a:b])}</mark>')
        pos = b
    out.append(escape(view.text[pos:]))
    return "".join(out)


def _sample(view: SampleView) -> str:
    figs = [f"{len(view.token_ids)} tokens"]
    if view.seq_rep_4 is not None:
        figs.append(f"seq-rep-4 {view.seq_rep_4:.2f}")
    if view.mean_entropy is not None:
        figs.append(f"mean entropy {view.mean_entropy:.2f} nats")
    if view.stop_reason:
        figs.append(f"stopped: {view.stop_reason}")
    loops = ""
    if view.loops:
        parts = [f"{lp.period} tok × {lp.repeats}" for lp in view.loops]
        loops = f' · <span class="loops">loops: {escape(", ".join(parts))}</span>'
    return (
        '<div class="sample">'
        f'<div class="prompt">{escape(view.prompt)}</div>'
        f'<div class="text">{_marked(view)}</div>'
        f'<div class="figs">{escape(" · ".join(figs))}{loops}</div>'
        "</div>"
    )


def _samples(views: list[SampleView]) -> str:
    by_step: dict[int, list[SampleView]] = defaultdict(list)
    for v in views:
        by_step[v.step].append(v)
    steps = sorted(by_step)
    shown = steps
    note = ""
    if len(steps) > MAX_SAMPLE_STEPS:
        head = MAX_SAMPLE_STEPS // 4
        shown = steps[:head] + steps[-(MAX_SAMPLE_STEPS - head):]
        note = (
            f'<p class="what">{len(steps) - len(shown)} evals between step {steps[head - 1]} and '
            f"step {steps[-(MAX_SAMPLE_STEPS - head)]} are not shown (samples.jsonl has them all).</p>"
        )
    parts = []
    for i, step in enumerate(shown):
        if note and i == MAX_SAMPLE_STEPS // 4:
            parts.append(note)
        parts.append(f'<h3 id="samples-step-{step}">step {step}</h3>')
        parts += [_sample(v) for v in by_step[step]]
    return "".join(parts)


def _summary(run: RunData) -> str:
    rows = [("run directory", str(run.root)), ("progress", run.status())]
    model = (run.config or {}).get("model") or {}
    train = (run.config or {}).get("train") or {}
    if model:
        rows.append((
            "model",
            f"{model.get('n_layer')} layers × {model.get('n_head')} heads, width {model.get('n_embd')}, "
            f"context {model.get('block_size')}, {model.get('attention', 'standard')} attention, "
            f"vocab {model.get('vocab_size')}",
        ))
    if train:
        rows.append((
            "training",
            f"{train.get('steps')} steps of {train.get('batch_size')} × {train.get('block_size')} tokens "
            f"(× {train.get('grad_accum', 1)} accumulation), lr {train.get('lr')}, "
            f"eval every {train.get('eval_every')}, seed {train.get('seed')}",
        ))
    if run.config and run.config.get("data"):
        rows.append(("data", str(run.config["data"])))
    if run.checkpoint:
        ck = run.checkpoint
        rows.append(("checkpoint", f"{ck.path.name}: step {ck.step}, {ck.tokens_seen:,} tokens seen"
                     if ck.tokens_seen is not None else f"{ck.path.name}: step {ck.step}"))
    found = run.present + [d.path.name for d in run.eval_results] + ([run.heads.path.name] if run.heads else [])
    rows.append(("files read", ", ".join(found) or "none"))
    body = "".join(f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>" for k, v in rows)
    return f'<table class="summary">{body}</table>'


def render_html(run: RunData, panels: list[Panel], views: list[SampleView]) -> str:
    """The whole page."""
    missing = [f"{p.title}: {m}" for p in panels for m in p.missing]
    nav = "".join(f'<a href="#panel-{p.id}">{escape(p.title)}</a>' for p in panels)
    sections = []
    for p in panels:
        body = [f'<section id="panel-{p.id}">', f"<h2>{escape(p.title)}</h2>", f'<p class="what">{escape(p.what)}</p>']
        body.append(_list(p.missing, "missing"))
        if p.png:
            body.append(_img(p))
        body.append(_list(p.facts, "facts"))
        if p.id == "samples" and views:
            body.append(_samples(views))
        body.append("</section>")
        sections.append("".join(body))
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    missing_html = ""
    if missing:
        missing_html = "<h2>Missing</h2>" + _list(missing, "missing")
    problems_html = ""
    if run.problems:
        problems_html = "<h2>Could not read</h2>" + _list(run.problems, "problems")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>gpt2 report: {escape(run.root.name or str(run.root))}</title>"
        f"<style>{CSS}</style></head><body>"
        f"<h1>Run report: {escape(run.root.name or str(run.root))}</h1>"
        f'<p class="status">{escape(run.status())} · made {made} by <code>gpt2 report</code></p>'
        f"{_summary(run)}<nav>{nav}</nav>{missing_html}{problems_html}"
        + "".join(sections)
        + "</body></html>\n"
    )
