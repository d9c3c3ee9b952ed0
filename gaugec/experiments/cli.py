"""`python -m gaugec.experiments NAME [--quick] [--seeds N] [--jobs N] [--write]`: run one experiment, print its
tables and summary, and with --write record them (docs/data/experiments, docs/experiments.md, docs/img)."""
from __future__ import annotations

import argparse
import importlib
import json
import time

from gaugec.bench.tables import write_section
from gaugec.experiments.common import DATA, DOC, run
from gaugec.progress import say

EXPERIMENTS = ("overtrain", "vit", "grokking")


def load(name: str):
    """The experiment module: what ``common.run`` sweeps (ARMS, GRID, BUDGET, SEEDS, QUICK_CONFIG, settings, train,
    describe) and ``table(rows)``, ``summary(rows)``, ``plot(rows, path)``."""
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"gaugec.experiments.{name}")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m gaugec.experiments", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=EXPERIMENTS)
    ap.add_argument("--quick", action="store_true", help="a smoke-sized run (minutes)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: the experiment's)")
    ap.add_argument("--write", action="store_true", help="record the JSON, the table and the plot under docs/")
    ap.add_argument("--steps", type=int, help="override the step budget")
    ap.add_argument("--depth", type=int, help="grokking: override the depth")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once, in worker processes of one thread each")
    ap.add_argument("--reference-only", action="store_true",
                    help="run the reference config alone (no grid: the best-config view is then missing)")
    ap.add_argument("--render", action="store_true", help="no training: rebuild the table, summary and plot from "
                    "the saved JSON (after a change to how they are reported)")
    ap.add_argument("--label", help="record under NAME-LABEL (JSON, markers, plot), beside the default NAME "
                    "(a second design of the same experiment, say another depth)")
    args = ap.parse_args(argv)
    exp = load(args.name)
    record = f"{args.name}-{args.label}" if args.label else args.name
    if args.render:
        rows = json.loads((DATA / f"{record}.json").read_text())
        wall = sum(r["seconds"] for r in rows) / 60
        command = rows[0].get("command", f"python -m gaugec.experiments {args.name}")
        return _report(record, exp, rows, command, f"{wall:.1f} min of training on 2 CPU cores; tables rebuilt "
                       f"from `{DATA}/{record}.json` with `--render`", write=True)
    command = " ".join(["python -m gaugec.experiments", args.name] + (["--quick"] if args.quick else [])
                       + [f"--{k} {v}" for k, v in (("seeds", args.seeds), ("steps", args.steps),
                                                    ("depth", args.depth), ("jobs", args.jobs if args.jobs > 1 else None)) if v]
                       + (["--reference-only"] if args.reference_only else [])
                       + ([f"--label {args.label}"] if args.label else []))
    t0 = time.perf_counter()

    def save(rows):
        DATA.mkdir(parents=True, exist_ok=True)
        for r in rows:
            r.setdefault("command", command)      # --render then reports the command that produced the rows
        (DATA / f"{record}.json").write_text(json.dumps(rows, indent=1, default=float) + "\n")

    rows = run(exp, quick=args.quick, seeds=args.seeds, progress=say,
                   checkpoint=save if args.write else None, steps=args.steps, reference_only=args.reference_only,
                   depth=args.depth, jobs=args.jobs)
    if args.write:
        save(rows)
    return _report(record, exp, rows, command, f"{(time.perf_counter() - t0) / 60:.1f} min on 2 CPU cores"
                   + (f", {args.jobs} runs at once" if args.jobs > 1 else ""),
                   args.write)


def _report(record: str, exp, rows: list[dict], command: str, cost: str, write: bool) -> list[dict]:
    """Print the tables and the summary; with ``write``, record them in docs/experiments.md and draw the plot."""
    summary = exp.summary(rows)
    text = f"Command: `{command} --write` ({cost})\n\n{exp.table(rows)}\n\n**Summary:** {summary}"
    print(text)
    if write:
        write_section(f"experiment-{record}", text, DOC)
        exp.plot(rows, f"docs/img/{record}.png")
    print(summary)
    return rows
