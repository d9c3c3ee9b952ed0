"""Dead-direction readings against the learning coefficient: the reduced-rank-regression grid (closed-form λ) and
a modular-addition transformer, read by gaugec and by devinterp's SGLD LLC."""
from __future__ import annotations

import time

import numpy as np
import torch

from gaugec.bench.tables import md_table, spearman


def _rrr_cells(steps: int = 3000, n: int = 2000, seed: int = 0):
    """Reduced-rank regression grid (M 10, N 5, H 2..5, true rank r0 <= H): yields (H, r0, trained model, x, y)."""
    import torch.nn as nn

    M, N = 10, 5
    for H in range(2, 6):
        for r0 in range(1, H + 1):
            g = torch.Generator().manual_seed(seed + 10 * H + r0)
            teacher = (torch.randn(N, r0, generator=g, dtype=torch.float64)
                       @ torch.randn(r0, M, generator=g, dtype=torch.float64)) / M ** 0.5
            x = torch.randn(n, M, generator=g, dtype=torch.float64)
            y = x @ teacher.T + 0.1 * torch.randn(n, N, generator=g, dtype=torch.float64)
            torch.manual_seed(seed + H * 10 + r0)
            model = nn.Sequential(nn.Linear(M, H, bias=False), nn.Linear(H, N, bias=False)).double()
            opt = torch.optim.Adam(model.parameters(), lr=1e-2)
            for _ in range(steps):
                opt.zero_grad()
                _rrr_loss(model, x, y).backward()
                opt.step()
            yield H, r0, model, x, y


def _rrr_loss(model, x, y):
    return 0.5 * ((model(x) - y) ** 2).sum(1).mean()


def bench_rrr(steps: int = 3000, n: int = 2000, seed: int = 0) -> tuple[list[dict], dict]:
    """Train each reduced-rank-regression cell and read its hidden layer.

    Returns the rows and, per reading, the mean over H of the Spearman correlation with the closed-form λ."""
    from gaugec import measure
    from gaugec.measure.rlct import rrr_learning_coefficient

    rows = []
    for H, r0, model, x, y in _rrr_cells(steps, n, seed):
        r = measure.layer_readings(model, x, y, "0", likelihood="gaussian")
        lam, _ = rrr_learning_coefficient(10, 5, H, r0)
        rows.append({"H": H, "r0": r0, "lambda": float(lam), "loss": float(_rrr_loss(model, x, y)),
                     "sigma_min": r.sigma_min, "lambda_min_plus": r.lambda_min_plus, "logdet_plus": r.logdet_plus,
                     "n_dead": r.n_dead})
    return rows, _per_h_spearman(rows, ("sigma_min", "lambda_min_plus", "logdet_plus"))


def _per_h_spearman(rows, keys) -> dict:
    corr = {}
    for key in keys:
        per_h = []
        for H in range(3, 6):      # H = 2 has two cells only
            cells = [rw for rw in rows if rw["H"] == H]
            per_h.append(spearman([c[key] for c in cells], [c["lambda"] for c in cells]))
        corr[key] = float(np.mean(per_h))
    return corr


LLC_CALIBRATION = dict(chains=4, burnin=200, draws=300, batch=100, lr=1e-3, localization=100.0)


def sgld_llc(model, x, y, chains=4, burnin=200, draws=300, batch=100, lr=1e-3, localization=100.0, seed=0,
             loss_fn=None):
    """devinterp's SGLD sampler (``SGMCMC.sgld``) driving devinterp's estimator λ̂ = nβ (E_draws L − L(w*)),
    nβ = m / log m for minibatch size m (devinterp's default). Returns (λ̂, samples through forward+backward)."""
    import copy
    import math

    from devinterp.optim import SGMCMC

    loss_fn = _rrr_loss if loss_fn is None else loss_fn
    nbeta = batch / math.log(batch)
    with torch.no_grad():
        init = float(loss_fn(model, x, y))
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(chains):
        chain = copy.deepcopy(model)
        opt = SGMCMC.sgld(chain.parameters(), lr=lr, localization=localization, nbeta=nbeta)
        for t in range(burnin + draws):
            idx = torch.randint(0, len(x), (batch,), generator=gen)
            opt.zero_grad()
            loss = loss_fn(chain, x[idx], y[idx])
            loss.backward()
            opt.step()
            if t >= burnin:
                losses.append(float(loss.detach()))
    return nbeta * (float(np.mean(losses)) - init), chains * (burnin + draws) * batch


def _read_both(model, x, y, layer: str, likelihood: str, loss_fn, seed: int) -> dict:
    """gaugec's layer readings (one per-sample pass over x) and devinterp's SGLD LLC, each timed."""
    from gaugec import measure

    t0 = time.perf_counter()
    r = measure.layer_readings(model, x, y, layer, likelihood=likelihood)
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    llc, samples = sgld_llc(model, x, y, seed=seed, loss_fn=loss_fn, **LLC_CALIBRATION)
    return {"llc": llc, "sigma_min": r.sigma_min, "logdet_plus": r.logdet_plus, "read_s": t_read,
            "llc_s": time.perf_counter() - t0, "read_samples": len(x), "llc_samples": samples}


def _cost_totals(rows) -> tuple[int, float, int, float]:
    """Samples and seconds summed over rows: (gaugec samples, gaugec s, devinterp samples, devinterp s)."""
    return (sum(r["read_samples"] for r in rows), sum(r["read_s"] for r in rows),
            sum(r["llc_samples"] for r in rows), sum(r["llc_s"] for r in rows))


def bench_llc(steps: int = 3000, n: int = 2000, seed: int = 0) -> tuple[list[dict], dict]:
    """The reduced-rank-regression grid read two ways: gaugec's one-pass readings and devinterp's SGLD LLC."""
    from gaugec.measure.rlct import rrr_learning_coefficient

    rows = []
    for H, r0, model, x, y in _rrr_cells(steps, n, seed):
        lam, _ = rrr_learning_coefficient(10, 5, H, r0)
        rows.append({"H": H, "r0": r0, "lambda": float(lam),
                     **_read_both(model, x, y, "0", "gaussian", _rrr_loss, seed)})
        print(rows[-1], flush=True)
    keys = ("llc", "sigma_min", "logdet_plus")
    corr = {"per_h": _per_h_spearman(rows, keys),
            "all": {k: spearman([r[k] for r in rows], [r["lambda"] for r in rows]) for k in keys}}
    return rows, corr


class ModularAddition(torch.nn.Module):
    """A one-layer Llama-style transformer reading "a b =" and predicting (a + b) mod p at the last position."""

    def __init__(self, p: int = 23, d: int = 32, seed: int = 0):
        super().__init__()
        from gaugec.zoo import TinyLlama

        torch.manual_seed(seed)
        self.p = p
        self.net = TinyLlama(vocab=p + 1, d=d, n_layers=1, n_heads=4, n_kv_heads=4, d_ff=64, eps=1e-6)

    def forward(self, ids):
        return self.net(ids)[:, -1]


def _ce_loss(model, x, y):
    return torch.nn.functional.cross_entropy(model(x), y)


def bench_llc_modular(p: int = 23, steps: int = 1500, n_checkpoints: int = 6, seed: int = 0) -> tuple[list, dict]:
    """Checkpoints along the training of a modular-addition transformer (half the pairs, AdamW, weight decay 1),
    read by devinterp's SGLD LLC and by gaugec's layer readings (no closed form: the rank agreement is reported)."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.reshape(-1), b.reshape(-1), torch.full((p * p,), p)], 1)
    y = (x[:, 0] + x[:, 1]) % p
    perm = torch.randperm(p * p, generator=g)
    train = perm[: p * p // 2]
    model = ModularAddition(p, seed=seed).double()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1.0)
    marks = set(np.linspace(steps / n_checkpoints, steps, n_checkpoints).astype(int).tolist())
    rows = []
    for step in range(1, steps + 1):
        opt.zero_grad()
        _ce_loss(model, x[train], y[train]).backward()
        opt.step()
        if step in marks:
            with torch.no_grad():
                train_loss = float(_ce_loss(model, x[train], y[train]))
                test_acc = float((model(x).argmax(-1) == y).double().mean())
            rows.append({"step": step, "train_loss": train_loss, "accuracy": test_acc,
                         **_read_both(model, x[train], y[train], "net.layers.0.mlp.up_proj", "categorical",
                                      _ce_loss, seed)})
            print(rows[-1], flush=True)
    corr = {k: spearman([r[k] for r in rows], [r["llc"] for r in rows]) for k in ("sigma_min", "logdet_plus")}
    return rows, corr


def format_llc_modular(rows, corr) -> str:
    lines = md_table(["step", "train loss", "accuracy (all pairs)", "devinterp λ̂", "gaugec σ_min",
                       "gaugec log det⁺ G"],
                      [[r["step"], f"{r['train_loss']:.3f}", f"{r['accuracy']:.2f}", f"{r['llc']:.2f}",
                        f"{r['sigma_min']:.3g}", f"{r['logdet_plus']:.1f}"] for r in rows])
    read_n, read_s, llc_n, llc_s = _cost_totals(rows)
    lines += ["", f"Samples through forward+backward: devinterp {llc_n:,}, gaugec {read_n:,} ({llc_n / read_n:.0f}x "
              f"fewer); wall time {llc_s:.1f} s against {read_s:.2f} s. Spearman with λ̂ across the checkpoints: "
              f"σ_min {corr['sigma_min']:+.2f}, log det⁺ {corr['logdet_plus']:+.2f}."]
    return "\n".join(lines)


def format_llc(rows, corr) -> str:
    lines = md_table(["H", "r0", "λ (closed form)", "devinterp λ̂", "gaugec σ_min(X_h)", "gaugec log det⁺ G"],
                      [[r["H"], r["r0"], f"{r['lambda']:.2f}", f"{r['llc']:.2f}", f"{r['sigma_min']:.3g}",
                        f"{r['logdet_plus']:.2f}"] for r in rows])
    read_n, read_s, llc_n, llc_s = _cost_totals(rows)
    a, h = corr["all"], corr["per_h"]
    lines += [""] + md_table(
        ["method", "samples through forward+backward (grid)", "wall s (grid)", "Spearman with λ, all 14 cells",
         "mean Spearman within H"],
        [["devinterp SGLD LLC", f"{llc_n:,}", f"{llc_s:.1f}", f"{a['llc']:+.2f}", f"{h['llc']:+.2f}"],
         ["gaugec σ_min(X_h)", f"{read_n:,}", f"{read_s:.2f}", f"{a['sigma_min']:+.2f}", f"{h['sigma_min']:+.2f}"],
         ["gaugec log det⁺ G", "(same pass)", "", f"{a['logdet_plus']:+.2f}", f"{h['logdet_plus']:+.2f}"]])
    lines += ["", f"Passes ratio: {llc_n / read_n:.0f}x fewer samples for gaugec's readings; wall-time ratio "
              f"{llc_s / max(read_s, 1e-9):.0f}x."]
    return "\n".join(lines)


def format_rrr(rows, corr) -> str:
    lines = md_table(["H", "r0", "λ (closed form)", "final loss", "σ_min(X_h)", "λ⁺_min(G_h)", "log det⁺(G_h)",
                       "dead"],
                      [[r["H"], r["r0"], f"{r['lambda']:.1f}", f"{r['loss']:.4f}", f"{r['sigma_min']:.3g}",
                        f"{r['lambda_min_plus']:.3g}", f"{r['logdet_plus']:.2f}", r["n_dead"]] for r in rows])
    lines.append("")
    lines.append("Spearman correlation with λ within each H (mean over H = 3, 4, 5): " +
                 ", ".join(f"{k} {v:+.2f}" for k, v in corr.items()))
    return "\n".join(lines)
