"""Plots for docs/measure.md: the deep-linear bridge's log–log slopes and the reduced-rank-regression readings.

    python examples/plot_measure_slopes.py [--out docs/img]      (needs matplotlib; about a minute on 2 cores)

Left: log det⁺ of the Fisher Gram at layer ℓ = 1 of a 3-layer bridge with r = 1..4 dead directions; the slopes are
r · 2(L − ℓ). Middle: σ²_min of the activations at ℓ = 1, 2 (slopes 2ℓ). Right: σ_min of the hidden layer of each
trained reduced-rank-regression cell against the closed-form learning coefficient λ, one colour per width H.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from gaugec import measure
from gaugec.zoo import deep_linear_bridge as bridge


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/img")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gaugec.bench.readings import _rrr_cells
    from gaugec.measure.rlct import rrr_learning_coefficient

    L, d, N = 3, 6, 400
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, d, generator=gen, dtype=torch.float64)
    y = x + 0.5 * torch.randn(N, d, generator=gen, dtype=torch.float64)
    ts = np.logspace(-2, -0.7, 6)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for r in (1, 2, 3, 4):
        rs = [measure.layer_readings(bridge(L, d, r, t), x, y, "0", likelihood="gaussian", rel_cutoff=1e-12)
              for t in ts]
        vals = [q.logdet_plus for q in rs]
        slope, _ = measure.loglog_slope(ts, vals, log_values=True)
        axes[0].plot(np.log(ts), vals, "o-", label=f"r = {r}: slope {slope:.2f} (r·4 = {4 * r})")
    axes[0].set_xlabel("log t")
    axes[0].set_ylabel("log det⁺ G (layer 1 of 3)")
    axes[0].legend()
    for ell in (1, 2):
        rs = [measure.layer_readings(bridge(L, d, 2, t), x, y, str(ell - 1), likelihood="gaussian") for t in ts]
        vals = [q.sigma_min ** 2 for q in rs]
        slope, _ = measure.loglog_slope(ts, vals)
        axes[1].loglog(ts, vals, "o-", label=f"ℓ = {ell}: slope {slope:.2f} (2ℓ = {2 * ell})")
    axes[1].set_xlabel("t")
    axes[1].set_ylabel("σ²_min(X_ℓ)")
    axes[1].legend()
    by_h: dict[int, list] = {}
    for H, r0, model, xs, ys in _rrr_cells():
        reading = measure.layer_readings(model, xs, ys, "0", likelihood="gaussian")
        lam, _ = rrr_learning_coefficient(10, 5, H, r0)
        by_h.setdefault(H, []).append((float(lam), reading.sigma_min))
    for H, pts in sorted(by_h.items()):
        lam, sig = zip(*pts)
        axes[2].semilogy(lam, sig, "o-", label=f"H = {H}")
    axes[2].set_xlabel("λ (Aoyagi–Watanabe)")
    axes[2].set_ylabel("σ_min of the hidden activations")
    axes[2].legend()
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "measure_slopes.png")
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
