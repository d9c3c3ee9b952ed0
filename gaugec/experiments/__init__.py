"""The DDC paper's headline experiments at laptop scale: ``python -m gaugec.experiments NAME [--quick] [--seeds N]
[--write]``, NAME in ``overtrain`` (E1), ``vit`` (E2), ``grokking`` (E3).

Each experiment trains every arm (the base optimizer, its DDC lift, and the lift without the per-step return to
the section: the design's ablation arm) on the same model, data, batches and step budget, over the same small
learning-rate × weight-decay grid, for seeds fixed before the run. It writes its rows to
``docs/data/experiments/NAME.json`` (one per optimizer, seed and config, with the curve), prints its table and a
one-line summary, and with ``--write`` records the table in docs/experiments.md between its markers and draws
``docs/img/NAME.png``. ``--quick`` is a smoke-sized run.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

from gaugec.bench.tables import md_table, write_section

DATA = pathlib.Path("docs/data/experiments")
DOC = "docs/experiments.md"


EXPERIMENTS = ("overtrain", "vit", "grokking")


def load(name: str):
    """The experiment module: ``run(quick, seeds)``, ``table(rows)``, ``summary(rows)``, ``plot(rows, path)``."""
    import importlib

    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"gaugec.experiments.{name}")


def sweep(name: str, seeds: int, grid, arms, train, settings: dict, describe, progress=print, checkpoint=None,
          jobs: int = 1) -> list[dict]:
    """Every seed × (lr, wd) config × arm, seeds outermost (an interrupted sweep keeps whole seeds).

    ``arms``: the arm names; ``train(arm, lr, wd, seed, **settings)``: a module-level function returning the run's
    metrics and curve (module-level so that ``jobs`` > 1 can run it in worker processes, one thread each: these
    models are too small for two threads to help one run, so two runs at once are about twice the throughput);
    ``describe(metrics)`` a progress line; ``checkpoint(rows)`` after every run. Rows come back in sweep order
    whatever order the workers finish in; ``settings`` are stored in every row."""
    runs = [(seed, lr, wd, arm) for seed in range(seeds) for lr, wd in grid for arm in arms]
    done: dict[int, dict] = {}

    def record(i, metrics, seconds):
        seed, lr, wd, arm = runs[i]
        done[i] = {"experiment": name, "optimizer": arm, "seed": seed, "config": f"lr {lr}, wd {wd}", "lr": lr,
                   "weight_decay": wd, **settings, **metrics, "seconds": seconds}
        if checkpoint:
            checkpoint([done[j] for j in sorted(done)])
        if progress:
            progress(f"  seed {seed} lr {lr} wd {wd} {arm}: {describe(metrics)} ({seconds:.0f} s)")

    if jobs <= 1:
        for i, run in enumerate(runs):
            record(i, *_timed(train, run, settings))
    else:
        import concurrent.futures as cf
        import multiprocessing

        with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                    initializer=_one_thread) as pool:
            futures = {pool.submit(_timed, train, run, settings): i for i, run in enumerate(runs)}
            for future in cf.as_completed(futures):
                record(futures[future], *future.result())
    return [done[i] for i in sorted(done)]


def _timed(train, run, settings):
    seed, lr, wd, arm = run
    t0 = time.perf_counter()
    metrics = train(arm, lr, wd, seed, **settings)
    return metrics, time.perf_counter() - t0


def _one_thread():
    import torch

    torch.set_num_threads(1)


def by_config(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows grouped by (config label, optimizer), in first-seen order."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault((r["config"], r["optimizer"]), []).append(r)
    return out


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def reference_config(rows: list[dict], reference: str) -> str:
    """The experiment's reference config, or the first one run (a --quick or --reference-only run of another)."""
    return reference if any(r["config"] == reference for r in rows) else rows[0]["config"]


def verdict(a: list[float], b: list[float]) -> str:
    """'reproduced in direction' when b's mean is below a's by more than twice the standard error of the
    difference, 'reversed' when above by as much, else 'not reproduced (within the seed spread)'."""
    import statistics

    if len(a) < 2 or len(b) < 2:
        return "undecided (one seed)"
    se = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
    diff = mean(a) - mean(b)
    if diff > 2 * se:
        return "reproduced in direction"
    if diff < -2 * se:
        return "reversed"
    return "not reproduced (within the seed spread)"


def best_configs(rows: list[dict], key: str = "best_val") -> dict[str, str]:
    """Per optimizer, the config with the lowest mean ``key`` over seeds ("each arm at its best")."""
    best: dict[str, tuple[float, str]] = {}
    for (config, opt), rs in by_config(rows).items():
        m = mean(r[key] for r in rs)
        if opt not in best or m < best[opt][0]:
            best[opt] = (m, config)
    return {opt: config for opt, (_, config) in best.items()}


def metric_table(rows: list[dict], columns: list[tuple[str, str, str]], reference: str) -> str:
    """Two tables: every arm at the ``reference`` config, and every arm at its own best config; each cell the mean
    over seeds with the per-seed values. ``columns``: (header, row key, format)."""
    groups = by_config(rows)
    best = best_configs(rows)

    def line(config, opt):
        rs = groups[(config, opt)]
        cells = []
        for _, key, fmt in columns:
            vals = [r[key] for r in rs]
            cells.append(f"{format(mean(vals), fmt)} ({' / '.join(format(v, fmt) for v in vals)})")
        return [opt, config, len(rs), *cells]

    header = ["optimizer", "config", "seeds", *(c[0] + " mean (per seed)" for c in columns)]
    same = [line(c, o) for (c, o) in groups if c == reference]
    own = [line(best[o], o) for o in dict.fromkeys(o for _, o in groups)]
    return "\n".join(["Same hyperparameters:", "", *md_table(header, same), "",
                      "Each arm at its best config (lowest mean best-validation loss over the grid):", "",
                      *md_table(header, own)])


def plot_curves(rows: list[dict], path: str, title: str, ylabel: str = "validation loss", key: str = "val",
                config: str | None = None, logy: bool = False):
    """Curves per arm at ``config`` (default: each arm's best): seeds thin, the mean bold."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'gaugec[plot]')")
        return
    best = best_configs(rows)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for i, opt in enumerate(dict.fromkeys(r["optimizer"] for r in rows)):
        cfg = config or best[opt]
        rs = [r for r in rows if r["optimizer"] == opt and r["config"] == cfg]
        for r in rs:
            ax.plot(r["curve"]["steps"], r["curve"][key], color=colours[i % 5], lw=0.6, alpha=0.5)
        steps = rs[0]["curve"]["steps"]
        avg = [mean(r["curve"][key][j] for r in rs) for j in range(len(steps))]
        ax.plot(steps, avg, color=colours[i % 5], lw=2, label=f"{opt} ({cfg})")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


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

    rows = exp.run(quick=args.quick, seeds=args.seeds, progress=lambda s: print(s, flush=True),
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
