"""Plot for docs/benchmarks.md: gaugec's one-pass readings against devinterp's SGLD LLC.

    python -m gaugec.bench llc --write                 (writes docs/data/bench_llc.json; needs gaugec[llc])
    python examples/plot_llc_comparison.py [--rows docs/data/bench_llc.json] [--out docs/img]   (needs matplotlib)

Reads the rows the benchmark saved (it never reruns SGLD). Top row, the reduced-rank-regression grid, one colour
per width H, every seed: devinterp's λ̂, the bottleneck's σ_min(X_h) and the output layer's λ⁺_min(G_out) against
the closed-form λ. Bottom: the modular-addition run, λ̂ and the gaugec readings along the checkpoints, with the
test accuracy.
"""
from __future__ import annotations

import argparse
import json
import os


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="docs/data/bench_llc.json")
    ap.add_argument("--out", default="docs/img")
    args = ap.parse_args(argv)
    if not os.path.exists(args.rows):
        raise SystemExit(f"{args.rows} not found: run `python -m gaugec.bench llc --write` first")
    with open(args.rows) as fh:
        data = json.load(fh)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gaugec.bench.readings import MODULAR_READINGS, RRR_LABELS

    grid, modular = data["grid"], data["modular"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    panels = [("llc", "linear"), ("sigma_min_h", "log"), ("lambda_min_plus_out", "log")]
    for ax, (key, scale) in zip(axes[0], panels):
        for H in sorted({r["H"] for r in grid}):
            for seed in sorted({r["seed"] for r in grid}):
                cells = [r for r in grid if r["H"] == H and r["seed"] == seed]
                ax.plot([c["lambda"] for c in cells], [c[key] for c in cells], "o-", color=f"C{H}", alpha=0.6,
                        label=f"H = {H}" if seed == grid[0]["seed"] else None)
        ax.set_yscale(scale)
        ax.set_xlabel("λ (Aoyagi–Watanabe closed form)")
        ax.set_ylabel(RRR_LABELS[key])
        ax.legend(fontsize=8)
    axes[0][0].set_title("devinterp: ranks across widths")
    axes[0][1].set_title("gaugec bottleneck: ranks within a width")
    axes[0][2].set_title("gaugec output layer: same width in every cell")
    steps = [r["step"] for r in modular]
    ax = axes[1][0]
    ax.plot(steps, [r["llc"] for r in modular], "o-", color="k", label="devinterp λ̂")
    ax.set_xlabel("training step")
    ax.set_ylabel("devinterp λ̂")
    twin = ax.twinx()
    twin.plot(steps, [r["test_accuracy"] for r in modular], "s--", color="C2", label="test accuracy")
    twin.set_ylabel("test accuracy")
    ax.set_title("modular addition: grokking run")
    for ax, key in zip(axes[1][1:], list(MODULAR_READINGS)[:2]):
        ax.plot(steps, [r[key] for r in modular], "o-", color="C1")
        ax.set_xlabel("training step")
        ax.set_ylabel(MODULAR_READINGS[key][-1])
        ax.set_title(f"gaugec: {MODULAR_READINGS[key][-1]}")
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "llc_comparison.png")
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
