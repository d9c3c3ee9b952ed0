"""What the experiments share: the sweep over seeds × configs × arms (in worker processes with --jobs), grouping,
verdicts, the two tables (same config, each arm at its best) and the curves."""
from __future__ import annotations

import pathlib
import time

from gaugec.bench.tables import md_table
from gaugec.progress import Progress, say

DATA = pathlib.Path("docs/data/experiments")
DOC = "docs/experiments.md"


def run(exp, quick: bool = False, seeds: int | None = None, progress=say, checkpoint=None, steps: int | None = None,
          reference_only: bool = False, depth: int | None = None, jobs: int = 1) -> list[dict]:
    """Every arm × config × seed of experiment module ``exp`` (its ``ARMS``, ``GRID``, ``BUDGET``, ``SEEDS``,
    ``QUICK_CONFIG``, ``settings``, ``train`` and ``describe``); ``checkpoint(rows)`` after each run (the partial rows
    survive an interruption). ``steps`` and ``depth`` override the budget and grokking's depth, ``reference_only`` runs
    the quick config alone at full budget, ``jobs`` runs that many at once."""
    budget, every = exp.BUDGET[quick]
    grid = [exp.QUICK_CONFIG] if quick or reference_only else exp.GRID
    return sweep(exp.__name__.rsplit(".", 1)[-1], seeds or (1 if quick else exp.SEEDS), grid, exp.ARMS, exp.train,
                 {"steps": steps or budget, "every": every, **exp.settings(quick, depth)}, exp.describe, progress,
                 checkpoint, jobs)


def sweep(name: str, seeds: int, grid, arms, train, settings: dict, describe, progress=say, checkpoint=None,
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

    with Progress(name, total=len(runs)) as bar:
        if jobs <= 1:
            for i, run in enumerate(runs):
                bar.stage("seed {} lr {} wd {} {}".format(*run))
                record(i, *_timed(train, run, settings))
                bar.update(1)
        else:
            import concurrent.futures as cf
            import multiprocessing

            with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_one_thread) as pool:
                futures = {pool.submit(_timed, train, run, settings): i for i, run in enumerate(runs)}
                for future in cf.as_completed(futures):
                    record(futures[future], *future.result())
                    bar.update(1)
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
