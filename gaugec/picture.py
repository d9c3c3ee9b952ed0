"""The gauge picture: one self-contained HTML page of a plan (``gaugec inspect TARGET --html FILE``).

* the legend: every family found, its colour, how many gauges and generators it has;
* the map: one row per parameter (grouped by module, in the model's order), one column per gauge (ordered by the
  first parameter it moves), a cell coloured by the gauge's family where the gauge moves that parameter: each gauge
  is a vertical band over what it moves. Hovering a cell names the gauge, its group and its dimension;
* the gauge table: name, family, group, dimension, the parameters it moves, the proof's status;
* with an oracle report (``gaugec verify TARGET --html FILE``): per module, the oracle's null dimensions, the found
  ones and the missed ones (misses in red), next to the map's rows.
"""
from __future__ import annotations

import html

# colour-blind-safe qualitative colours (Okabe–Ito and Tol's bright), assigned to families in sorted order
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#4477AA", "#EE6677",
           "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB"]

MISSED_SHOWN = 0.05     # a module holding less of the missed dimensions (their squared mass on it) is not marked

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; font-size: 12px; }
td, th { padding: 1px 6px; text-align: left; white-space: nowrap; }
table.map td.cell { width: 9px; min-width: 9px; padding: 0; border: 1px solid #f2f2f2; }
table.map tr.module td { border-top: 2px solid #ccc; }
table.map th.gauge { writing-mode: vertical-rl; transform: rotate(180deg); font-weight: normal; font-size: 10px;
                     padding: 2px 0; max-height: 16em; overflow: hidden; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; vertical-align: middle; margin-right: 0.3em; }
.missed { color: #b00; font-weight: bold; } .num { text-align: right; }
"""


def family_colours(families) -> dict[str, str]:
    return {f: PALETTE[i % len(PALETTE)] for i, f in enumerate(sorted(set(families)))}


def _module_of(p: str) -> str:
    return p.rsplit(".", 1)[0] if "." in p else "(root)"


def map_layout(plan):
    """(parameters in model order, gauges ordered by the first parameter they move, per gauge the set of parameters
    it moves, family colours)."""
    params = list(plan.signature())
    order = {p: i for i, p in enumerate(params)}
    columns = sorted(plan.gauges, key=lambda g: (min((order.get(p, len(params)) for p in g.params), default=0),
                                                 g.name))
    return params, columns, [set(g.params) for g in columns], family_colours(g.family for g in plan.gauges)


def render_html(plan, report=None, title: str = "") -> str:
    """The page for ``plan`` (and, when given, the oracle's ``report`` from :func:`gaugec.verify`)."""
    esc = html.escape
    gauges = plan.gauges
    params, columns, moved, colour = map_layout(plan)
    group = {id(g): g.group for g in gauges}      # computed once: a full-size gauge has ~10⁵ blocks
    dim = {id(g): g.dim for g in gauges}
    span: dict[str, int] = {}
    for p in params:
        span[_module_of(p)] = span.get(_module_of(p), 0) + 1

    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>gaugec: {esc(title)}</title>"
           f"<style>{_STYLE}</style></head><body>",
           f"<h1>gaugec: the gauges of {esc(title or 'the model')}</h1>",
           f"<p>{len(gauges)} gauges, {sum(dim.values()):,} generators over {plan.n_params:,} parameters"
           + (f"; {len(plan.rejected)} rejected" if plan.rejected else "") + ".</p>"]

    out.append("<h2>Families</h2><table class='legend'><tr><th>family</th><th>gauges</th><th>generators</th></tr>")
    for fam in sorted(colour):
        members = [g for g in gauges if g.family == fam]
        out.append(f"<tr><td><span class='swatch' style='background:{colour[fam]}'></span>{esc(fam)}</td>"
                   f"<td class='num'>{len(members)}</td><td class='num'>{sum(dim[id(g)] for g in members):,}</td></tr>")
    out.append("</table>")

    modules = {r.module: r for r in report.modules} if report is not None else {}
    out.append("<h2>Map: which gauge moves which parameter</h2><table class='map'><tr><th>parameter</th>")
    if report is not None:
        out.append("<th>oracle</th><th>found</th><th>missed</th>")
    for g in columns:
        out.append(f"<th class='gauge' title='{esc(g.name)}'>{esc(g.name)}</th>")
    out.append("</tr>")
    shown_module = None
    for p in params:
        module = _module_of(p)
        first = module != shown_module
        shown_module = module
        out.append(f"<tr{' class=module' if first else ''}><td>{esc(p)}</td>")
        if report is not None:
            r = modules.get(module)
            if first and r is not None:
                miss = "missed" if r.missed > MISSED_SHOWN else ""
                rows = span[module]
                out.append(f"<td class='num' rowspan={rows}>{r.oracle:.1f}</td><td class='num' rowspan={rows}>"
                           f"{r.found:.1f}</td><td class='num {miss}' rowspan={rows}>{r.missed:.1f}</td>")
            elif first:
                out.append(f"<td rowspan={span[module]}></td>" * 3)
        for g, ps in zip(columns, moved):
            if p in ps:
                out.append(f"<td class='cell' style='background:{colour[g.family]}' "
                           f"title='{esc(g.name)}: {esc(group[id(g)])}, dim {dim[id(g)]}'></td>")
            else:
                out.append("<td class='cell'></td>")
        out.append("</tr>")
    out.append("</table>")

    if report is not None:
        out.append(f"<p>Oracle (float64, generic point): nullity {report.nullity}, found {report.found_rank}, "
                   f"<span class='{'missed' if report.missed else ''}'>missed {report.missed}</span>"
                   + (f" ({report.dead_missed} of them dead coordinates)" if report.dead_missed else "")
                   + f"; {'sound' if report.sound else 'UNSOUND'}.</p>")

    out.append("<h2>Gauges</h2><table class='gauges'><tr><th>gauge</th><th>family</th><th>group</th>"
               "<th>dim</th><th>parameters</th><th>proof</th></tr>")
    for g in gauges:
        out.append(f"<tr><td>{esc(g.name)}</td><td><span class='swatch' style='background:{colour[g.family]}'>"
                   f"</span>{esc(g.family)}</td><td>{esc(group[id(g)])}</td><td class='num'>{dim[id(g)]:,}</td>"
                   f"<td>{esc(', '.join(g.params))}</td><td>{esc(g.proof.status if g.proof else '')}</td></tr>")
    out.append("</table></body></html>")
    return "\n".join(out)


def write_html(path: str, plan, report=None, title: str = ""):
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render_html(plan, report, title))


def write_png(path: str, plan, report=None, title: str = ""):
    """The map as a PNG (needs matplotlib, the ``plot`` extra): parameters down, gauges across, coloured by family;
    with ``report`` a last column of missed oracle dimensions per module (red, darker where more lie)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import to_rgb
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise ImportError("--png needs matplotlib: pip install 'gaugec[plot]' (or use --html)") from exc
    import numpy as np

    params, columns, moved, colour = map_layout(plan)
    img = np.ones((len(params), len(columns) + (2 if report is not None else 0), 3))
    for j, (g, ps) in enumerate(zip(columns, moved)):
        for i, p in enumerate(params):
            if p in ps:
                img[i, j] = to_rgb(colour[g.family])
    if report is not None:
        missed = {r.module: r.missed for r in report.modules}
        most = max(missed.values(), default=0.0)
        for i, p in enumerate(params):
            share = missed.get(_module_of(p), 0.0) / most if most > MISSED_SHOWN else 0.0
            if share > 0:      # red, darker where more of the missed dimensions lie
                img[i, -1] = (1.0 - 0.25 * share, 1.0 - share, 1.0 - share)
    rows, cols = img.shape[:2]
    cell = min(0.22, 14.0 / max(rows, cols))            # inches; the grid stays within 14 inches
    left, right, top, bottom = 3.2, 3.6, 0.5, 2.6       # room for parameter names, legend, title, gauge names
    fig = plt.figure(figsize=(left + cols * cell + right, top + rows * cell + bottom))
    W, H = fig.get_size_inches()
    ax = fig.add_axes((left / W, bottom / H, cols * cell / W, rows * cell / H))
    ax.imshow(img, aspect="auto", interpolation="nearest")
    every = max(1, int(np.ceil(0.12 / cell)))           # a label every ~9 points
    ax.set_yticks(range(0, rows, every))
    ax.set_yticklabels(params[::every], fontsize=6)
    xt = list(range(0, len(columns), every))
    ax.set_xticks(xt)
    ax.set_xticklabels([columns[j].name for j in xt], rotation=90, fontsize=6)
    if report is not None:
        ax.axvline(len(columns) + 0.5, color="#888", lw=0.5)
    handles = [Patch(color=c, label=f) for f, c in sorted(colour.items())]
    if report is not None:
        handles.append(Patch(color=(0.75, 0.0, 0.0),
                             label=f"missed oracle dimensions per\nmodule ({report.missed} missed of "
                                   f"{report.nullity})"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0 + 0.1 / (cols * cell), 1.0), fontsize=7,
              frameon=False)
    fig.suptitle(f"gaugec: {title or 'the model'}: {len(columns)} gauges over {len(params)} parameters",
                 fontsize=9, x=left / W, y=1 - 0.15 / H, ha="left", va="top")
    fig.savefig(path, dpi=130)
    plt.close(fig)
