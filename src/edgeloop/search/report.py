"""The shrink report: one self-contained HTML page (inline SVG plots, no scripts, no fetches).

The plots are drawn here as plain SVG because the page must open offline and
carry no JavaScript; a plotting library would add a dependency for two scatter
plots. Everything is rendered with jinja2 (autoescaped).
"""

from __future__ import annotations

import math

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgeloop shrink: {{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1300px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
td.l,th.l{text-align:left}tr.chosen{background:#d9f2d9}tr.front td:first-child{font-weight:bold}
tr.err{color:#999}.plots{display:flex;gap:2em;flex-wrap:wrap}.bad{color:#b00}
svg text{font-size:11px}
</style></head><body>
<h1>edgeloop shrink: {{ title }}</h1>
<p>Metric <b>{{ metric }}</b> ({{ 'higher' if hib else 'lower' }} is better) on the {{ splits.validation }} samples of the
validation split, which chooses (refits train on the {{ splits.train }} samples of the train split; calibration:
{{ splits.calib }} samples, never scored).{% if test %} The test split ({{ test.samples }} samples) is measured once, after
the choice: baseline {{ fmt(test.baseline) }}{% if test.chosen is not none %}, chosen {{ fmt(test.chosen) }}{% endif %}.{% endif %} Baseline {{ metric }} {{ fmt(baseline.metrics[metric]) }},
file {{ kb(baseline.metrics.file_bytes) }}. Limits: {{ limits_text }}. Search took {{ seconds }} s.</p>
{% if chosen %}
<p><b>Chosen: {{ chosen.id }}</b> ({{ recipe_text(chosen.passes) }}): {{ metric }} {{ fmt(chosen.metrics[metric]) }},
file {{ kb(chosen.metrics.file_bytes) }} ({{ '%.2f' % (baseline.metrics.file_bytes / chosen.metrics.file_bytes) }}x smaller),
flash {{ kb(chosen.metrics.flash_bytes) }}, peak RAM {{ kb(chosen.metrics.peak_ram_bytes) }}.</p>
{% else %}
<p class="bad"><b>No candidate meets the limits.</b> Closest:</p>
<ul class="bad">{% for c in closest %}<li>{{ c.id }} ({{ recipe_text(c.passes) }}): {{ c.misses | join('; ') }}</li>{% endfor %}</ul>
{% endif %}
<div class="plots">{{ plot_size | safe }}{{ plot_latency | safe }}</div>
<h2>Candidates</h2>
<table><tr><th class="l">id</th><th class="l">passes</th><th class="l">parent</th><th>{{ metric }}</th><th>drop</th><th>file</th><th>flash</th>
<th>peak RAM</th><th>MACs</th><th class="l">precision</th><th>host ms</th>{% if target %}<th>{{ target }} ms (est.)</th>{% endif %}
<th class="l">front</th><th class="l">limits</th></tr>
{% for c in rows %}
<tr class="{{ 'chosen' if c.chosen else '' }} {{ 'front' if c.on_front else '' }} {{ 'err' if c.error else '' }}">
<td class="l">{{ c.id }}</td><td class="l">{{ recipe_text(c.passes) or '(original)' }}</td><td class="l">{{ c.parent or '' }}</td>
{% if c.error %}<td class="l" colspan="{{ 10 if target else 9 }}">failed: {{ c.error }}</td><td></td>
{% else %}
<td>{{ fmt(c.metrics[metric]) }}</td><td>{{ fmt(c.metrics.drop) }}</td><td>{{ kb(c.metrics.file_bytes) }}</td><td>{{ kb(c.metrics.flash_bytes) }}</td>
<td>{{ kb(c.metrics.peak_ram_bytes) }}</td><td>{{ '{:,}'.format(c.metrics.macs) }}</td><td class="l">{{ c.metrics.precision }}</td>
<td>{{ ms(c.metrics.host_latency_ms) }}</td>{% if target %}<td>{{ ms(c.metrics.target_latency_ms) }}</td>{% endif %}
<td class="l">{{ 'yes' if c.on_front else '' }}</td><td class="l">{{ 'meets' if not c.misses else c.misses | join('; ') }}</td>
{% endif %}</tr>
{% endfor %}</table>
{% if info.int8_drop %}{% set q = info.int8_drop %}<h2>int8 for this detector ({{ q.split }} split)</h2>
<p>float {{ metric }} {{ fmt(q.float) }}; int8 ({{ q.int8_candidate }}, {{ q.calibration }}) {{ fmt(q.int8) }}: a drop of
{{ fmt(q.drop) }} against max-drop {{ q.max_drop }}.{% if q.mixed_tried %} The head ({{ q.head_layers | length }} nodes from the
last convolutions to the outputs) and the last layers that cost the most were kept float:{% else %} Within max-drop: nothing kept float.{% endif %}</p>
{% if q.mixed %}<table><tr><th class="l">id</th><th class="l">nodes kept float</th><th>{{ metric }}</th><th>drop</th><th class="l">limits</th></tr>
{% for r in q.mixed %}<tr><td class="l">{{ r.id }}</td><td class="l">{{ r.float_layers | length }}</td><td>{{ fmt(r[metric]) }}</td>
<td>{{ fmt(r.drop) }}</td><td class="l">{{ 'meets' if r.meets_limits else 'misses' }}</td></tr>{% endfor %}</table>{% endif %}{% endif %}
{% if info.layer_sensitivity %}<h2>Layer sensitivity to int8 (validation split)</h2>
<table><tr><th class="l">layer</th><th>{{ metric }} regained when left float</th></tr>
{% for r in info.layer_sensitivity %}<tr><td class="l">{{ r.layer }}</td><td>{{ fmt(r.gain) }}</td></tr>{% endfor %}</table>{% endif %}
</body></html>
"""


def _scatter(points: list[dict], xkey: str, xlabel: str, ylabel: str, log_x: bool = True,
             higher_is_better: bool = True) -> str:
    """A small SVG scatter plot: green points are on the search's Pareto front (size, latency,
    metric), the dashed line is this plot's own two-axis front, the chosen one is ringed."""
    W, H, L, R, T, B = 460, 320, 60, 15, 25, 45
    pts = [p for p in points if p.get(xkey) is not None and p.get("y") is not None]
    if not pts:
        return f"<p>no data for {xlabel}</p>"

    def tx(v: float) -> float:
        return math.log10(max(v, 1e-9)) if log_x else v

    xs = [tx(p[xkey]) for p in pts]
    ys = [p["y"] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 - x0 < 1e-9:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.01, y1 + 0.01
    padx, pady = (x1 - x0) * 0.05, (y1 - y0) * 0.08
    x0, x1, y0, y1 = x0 - padx, x1 + padx, y0 - pady, y1 + pady

    def sx(v: float) -> float:
        return L + (tx(v) - x0) / (x1 - x0) * (W - L - R)

    def sy(v: float) -> float:
        return T + (1 - (v - y0) / (y1 - y0)) * (H - T - B)

    from markupsafe import escape

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img">',
           f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="#999"/>']
    for i in range(5):  # axis ticks
        yv = y0 + (y1 - y0) * i / 4
        out.append(f'<text x="{L - 4}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.3g}</text>')
        xv = x0 + (x1 - x0) * i / 4
        label = 10 ** xv if log_x else xv
        out.append(f'<text x="{L + (xv - x0) / (x1 - x0) * (W - L - R):.1f}" y="{H - B + 14}" '
                   f'text-anchor="middle">{label:.3g}</text>')
    out.append(f'<text x="{(L + W - R) / 2}" y="{H - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="14" y="{(T + H - B) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {(T + H - B) / 2})">{escape(ylabel)}</text>')
    from edgeloop.search import pareto_front

    flags = pareto_front([(p[xkey], -p["y"] if higher_is_better else p["y"]) for p in pts])
    front = sorted((p for p, f in zip(pts, flags) if f), key=lambda p: p[xkey])
    if len(front) > 1:
        d = " ".join(f"{sx(p[xkey]):.1f},{sy(p['y']):.1f}" for p in front)
        out.append(f'<polyline points="{d}" fill="none" stroke="#3a7" stroke-dasharray="4 3"/>')
    for p in pts:
        color = "#3a7" if p["front"] else "#89a"
        if p["id"] == "baseline":
            color = "#333"
        out.append(f'<circle cx="{sx(p[xkey]):.1f}" cy="{sy(p["y"]):.1f}" r="4" fill="{color}">'
                   f'<title>{escape(p["id"])}: {escape(p["label"])}</title></circle>')
        if p["chosen"]:
            out.append(f'<circle cx="{sx(p[xkey]):.1f}" cy="{sy(p["y"]):.1f}" r="8" fill="none" '
                       f'stroke="#d22" stroke-width="2"/>')
        out.append(f'<text x="{sx(p[xkey]) + 6:.1f}" y="{sy(p["y"]) - 5:.1f}" fill="#555">'
                   f'{escape(p["id"])}</text>')
    out.append("</svg>")
    return "".join(out)


def _defaults(name: str) -> dict:
    from edgeloop.passes import config_from_dict, config_to_dict

    try:
        return config_to_dict(config_from_dict(name, {}))
    except Exception:
        return {}


def recipe_text(passes: list[dict]) -> str:
    """Short human form of a recipe: each pass with the settings that differ from its defaults."""
    parts = []
    for step in passes:
        default = _defaults(step["pass"])
        full = step.get("config") or {}
        first = next(iter(default), None)  # a pass's main setting (ratio, sparsity, calibration...) always shows
        cfg = {k: v for k, v in full.items() if k == first or k not in default or default[k] != v}
        short = ", ".join(f"{k}={v}" for k, v in cfg.items()
                          if v not in ((), [], None) and not (isinstance(v, list) and len(v) > 6))
        long_lists = [k for k, v in cfg.items() if isinstance(v, list) and len(v) > 6]
        short += "".join(f", {k}=<{len(cfg[k])} items>" for k in long_lists)
        parts.append(f"{step['pass']}({short.lstrip(', ')})")
    return " + ".join(parts)


def render(result: dict, title: str, closest: list[dict] | None = None) -> str:
    import jinja2

    metric = result["metric"]
    rows = [result["baseline"]] + result["candidates"]
    ok = [r for r in rows if not r.get("error") and r.get("metrics")]
    target = result["limits"].get("target")
    points = [{"id": r["id"], "label": recipe_text(r["passes"]) or "original", "front": r["on_front"],
               "chosen": r["chosen"], "y": r["metrics"][metric], "size": r["metrics"]["file_bytes"] / 1024,
               "lat": (r["metrics"].get("target_latency_ms") if target else None)
               or r["metrics"].get("host_latency_ms")} for r in ok]
    lat_label = f"latency on {target}, ms (estimated)" if target else "host latency, ms (onnxruntime, 1 thread)"
    lim = result["limits"]
    limits_text = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in lim.items() if v is not None) or "none"
    chosen = next((r for r in rows if r["chosen"]), None)

    def kb(n):
        return "-" if n is None else (f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} B")

    def ms(x):
        return "-" if x is None else f"{x:.3g}"

    def fmt(x):
        return "-" if x is None else f"{x:.4f}"

    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    return env.from_string(TEMPLATE).render(
        title=title, metric=metric, hib=result["higher_is_better"], baseline=result["baseline"],
        splits=result.get("splits", {}), test=result.get("test"), seconds=result.get("seconds"), limits_text=limits_text,
        chosen=chosen, closest=closest or [], rows=rows, target=target, info=result,
        plot_size=_scatter(points, "size", "file size, KB (log)", metric,
                           higher_is_better=result["higher_is_better"]),
        plot_latency=_scatter(points, "lat", lat_label, metric, log_x=False,
                              higher_is_better=result["higher_is_better"]),
        kb=kb, ms=ms, fmt=fmt, recipe_text=recipe_text)
