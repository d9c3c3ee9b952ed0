"""Dead-direction readings against the learning coefficient: the reduced-rank-regression grid (closed-form λ) and
a modular-addition transformer, read by gaugec and by devinterp's SGLD LLC."""
from __future__ import annotations

import time

import numpy as np
import torch

from gaugec.bench.tables import md_table, spearman


RRR_M, RRR_N = 10, 5
RRR_SEEDS = (0, 1, 2, 3)
LLC_ROWS = "docs/data/bench_llc.json"

# name -> (layer of nn.Sequential(A, B), attribute of LayerReadings, the sign the DDS paper reports, or "").
# Layer "0" is the bottleneck h (width H); layer "1" is the output h2, width N = 5 in every cell: the paper's
# dimension-fixed boundary layer, the only one comparable across widths.
RRR_READINGS = {
    "sigma_min_h": ("0", "sigma_min", ""),
    "lambda_min_plus_h": ("0", "lambda_min_plus", ""),
    "logdet_plus_h": ("0", "logdet_plus", ""),
    "sigma_min_out": ("1", "sigma_min", "+"),
    "lambda_min_plus_out": ("1", "lambda_min_plus", "−"),
    "logdet_plus_out": ("1", "logdet_plus", "−"),
}
RRR_LABELS = {"sigma_min_h": "σ_min(X_h)", "lambda_min_plus_h": "λ⁺_min(G_h)", "logdet_plus_h": "log det⁺(G_h)",
              "sigma_min_out": "σ_min(X_out)", "lambda_min_plus_out": "λ⁺_min(G_out)",
              "logdet_plus_out": "log det⁺(G_out)", "capacity": "H·r0 (naive capacity proxy)",
              "loss": "final training loss", "llc": "devinterp SGLD λ̂"}


def _rrr_cells(steps: int = 3000, n: int = 2000, seed: int = 0):
    """The reduced-rank-regression grid (input M = 10, output N = 5, bottleneck H = 2..5, true rank r0 <= H), each
    cell trained with Adam (full batch, float64): yields (H, r0, model, x, y).

    The cells of one seed share the inputs, the label noise (σ = 0.1) and the teacher's factors (the rank-r0 truth
    is the leading r0 terms of one fixed 5 x 5 x 10 factorisation): common random numbers, so that the cells differ
    only in (H, r0) and a reading's differences across cells are not a fresh noise draw's."""
    import torch.nn as nn

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, RRR_M, generator=g, dtype=torch.float64)
    noise = 0.1 * torch.randn(n, RRR_N, generator=g, dtype=torch.float64)
    U = torch.randn(RRR_N, RRR_N, generator=g, dtype=torch.float64)
    V = torch.randn(RRR_N, RRR_M, generator=g, dtype=torch.float64)
    for H in range(2, RRR_N + 1):
        for r0 in range(1, H + 1):
            y = x @ (U[:, :r0] @ V[:r0] / RRR_M ** 0.5).T + noise
            torch.manual_seed(seed + 10 * H + r0)
            model = nn.Sequential(nn.Linear(RRR_M, H, bias=False), nn.Linear(H, RRR_N, bias=False)).double()
            opt = torch.optim.Adam(model.parameters(), lr=1e-2)
            for _ in range(steps):
                opt.zero_grad()
                _rrr_loss(model, x, y).backward()
                opt.step()
            yield H, r0, model, x, y


def _rrr_loss(model, x, y):
    return 0.5 * ((model(x) - y) ** 2).sum(1).mean()


def layer_readings_timed(model, x, y, specs: dict, **kw) -> dict:
    """Readings named by ``specs`` (name -> (layer, attribute of LayerReadings, ...)), one
    :func:`gaugec.measure.layer_readings` pass per layer, with the time and the samples they took."""
    from gaugec import measure

    t0 = time.perf_counter()
    by_layer = {layer: measure.layer_readings(model, x, y, layer, **kw) for layer in {s[0] for s in specs.values()}}
    out = {name: float(getattr(by_layer[spec[0]], spec[1])) for name, spec in specs.items()}
    return {**out, "read_s": time.perf_counter() - t0, "read_samples": len(x) * len(by_layer)}


def _progress(row: dict) -> None:
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)


def _grid_rows(seeds, steps: int, n: int, with_llc: bool) -> list[dict]:
    from gaugec.measure.rlct import rrr_learning_coefficient

    rows = []
    for seed in seeds:
        for H, r0, model, x, y in _rrr_cells(steps, n, seed):
            lam, _ = rrr_learning_coefficient(RRR_M, RRR_N, H, r0)
            row = {"seed": seed, "H": H, "r0": r0, "lambda": float(lam), "capacity": H * r0,
                   "loss": float(_rrr_loss(model, x, y).detach()),
                   **layer_readings_timed(model, x, y, RRR_READINGS, likelihood="gaussian")}
            if with_llc:
                t0 = time.perf_counter()
                row["llc"], row["llc_samples"] = sgld_llc(model, x, y, seed=seed, **LLC_CALIBRATION)
                row["llc_s"] = time.perf_counter() - t0
            rows.append(row)
            _progress(row)
    return rows


def rank_agreement(rows, keys) -> dict:
    """Per reading, Spearman correlations with λ, one per seed: across all 14 cells ("all") and the mean over
    H = 3, 4, 5 of the correlation within one width ("within"; H = 2 has two cells only)."""
    out = {}
    for key in keys:
        within, across = [], []
        for seed in sorted({r["seed"] for r in rows}):
            cells = [r for r in rows if r["seed"] == seed]
            across.append(spearman([c[key] for c in cells], [c["lambda"] for c in cells]))
            within.append(float(np.mean([
                spearman([c[key] for c in cells if c["H"] == H], [c["lambda"] for c in cells if c["H"] == H])
                for H in range(3, RRR_N + 1)])))
        out[key] = {"all": across, "within": within}
    return out


def bench_rrr(seeds=RRR_SEEDS, steps: int = 3000, n: int = 2000) -> tuple[list[dict], dict]:
    """Train every cell of the grid for each seed and read both layers; rows and :func:`rank_agreement`."""
    rows = _grid_rows(seeds, steps, n, with_llc=False)
    return rows, rank_agreement(rows, [*RRR_READINGS, "capacity", "loss"])


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


def _cost_totals(rows) -> tuple[int, float, int, float]:
    """Samples and seconds summed over rows: (gaugec samples, gaugec s, devinterp samples, devinterp s)."""
    return (sum(r["read_samples"] for r in rows), sum(r["read_s"] for r in rows),
            sum(r["llc_samples"] for r in rows), sum(r["llc_s"] for r in rows))


def bench_llc(seeds=RRR_SEEDS, steps: int = 3000, n: int = 2000) -> tuple[list[dict], dict]:
    """The grid read two ways: gaugec's one-pass readings and devinterp's SGLD LLC (same trained cells)."""
    rows = _grid_rows(seeds, steps, n, with_llc=True)
    return rows, rank_agreement(rows, ["llc", *RRR_READINGS, "capacity", "loss"])


class ModularAddition(torch.nn.Module):
    """A one-layer Llama-style transformer reading "a b =" and predicting (a + b) mod p at the last position."""

    def __init__(self, p: int = 23, d: int = 32, seed: int = 0):
        super().__init__()
        from gaugec.zoo import TinyLlama

        torch.manual_seed(seed)
        self.p = p
        self.net = TinyLlama(vocab=p + 1, d=d, n_layers=1, n_heads=4, n_kv_heads=4, d_ff=2 * d, eps=1e-6)

    def forward(self, ids):
        return self.net(ids)[:, -1]


def _ce_loss(model, x, y):
    return torch.nn.functional.cross_entropy(model(x), y)


# name -> (layer of ModularAddition, attribute of LayerReadings, label), read with the true Fisher (labels drawn
# from the model). All are reported; none was picked by its agreement with λ̂. The layers: the MLP hidden layer,
# the MLP's write into the residual stream, and the final norm's output (the unembedding's input, a boundary layer).
MODULAR_READINGS = {
    "logdet_plus_up": ("net.layers.0.mlp.up_proj", "logdet_plus", "log det⁺ G at mlp.up_proj"),
    "logdet_plus_down": ("net.layers.0.mlp.down_proj", "logdet_plus", "log det⁺ G at mlp.down_proj"),
    "logdet_plus_norm": ("net.norm", "logdet_plus", "log det⁺ G at the final norm"),
    "lambda_min_plus_norm": ("net.norm", "lambda_min_plus", "λ⁺_min(G) at the final norm"),
    "sigma_min_down": ("net.layers.0.mlp.down_proj", "sigma_min", "σ_min(X) at mlp.down_proj"),
}
MODULAR_RECIPE = dict(p=23, train_fraction=0.8, d=32, lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))
MODULAR_CHECKPOINTS = (250, 500, 1000, 2000, 3000, 4000, 5000, 5500, 6000)


def _modular_data(p: int, train_fraction: float, seed: int):
    """Every pair "a b =" with its label (a + b) mod p, and a random split into training and test pairs."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.reshape(-1), b.reshape(-1), torch.full((p * p,), p)], 1)
    y = (x[:, 0] + x[:, 1]) % p
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    cut = int(train_fraction * p * p)
    return x, y, perm[:cut], perm[cut:]


def bench_llc_modular(seed: int = 0, checkpoints=MODULAR_CHECKPOINTS, **recipe) -> tuple[list, dict]:
    """A modular-addition transformer trained until it groks (:data:`MODULAR_RECIPE`: full-batch AdamW with
    weight decay 1 on 80% of the pairs; it memorises within ~500 steps and generalises near step 5,500), read at
    each checkpoint by devinterp's SGLD LLC and by gaugec's layer readings, both on the training pairs. There is no
    closed form: the Spearman correlation of each reading with λ̂ across the checkpoints is reported."""
    rc = {**MODULAR_RECIPE, **recipe}
    x, y, train, test = _modular_data(rc["p"], rc["train_fraction"], seed)
    model = ModularAddition(rc["p"], d=rc["d"], seed=seed).double()
    opt = torch.optim.AdamW(model.parameters(), lr=rc["lr"], weight_decay=rc["weight_decay"], betas=rc["betas"])
    rows = []
    for step in range(1, max(checkpoints) + 1):
        opt.zero_grad()
        _ce_loss(model, x[train], y[train]).backward()
        opt.step()
        if step not in checkpoints:
            continue
        with torch.no_grad():
            row = {"step": step, "train_loss": float(_ce_loss(model, x[train], y[train])),
                   "test_accuracy": float((model(x[test]).argmax(-1) == y[test]).double().mean())}
        row.update(layer_readings_timed(model, x[train], y[train], MODULAR_READINGS, fisher="true",
                                        likelihood="categorical"))
        t0 = time.perf_counter()
        row["llc"], row["llc_samples"] = sgld_llc(model, x[train], y[train], seed=seed, loss_fn=_ce_loss,
                                                  **LLC_CALIBRATION)
        row["llc_s"] = time.perf_counter() - t0
        rows.append(row)
        _progress(row)
    corr = {k: spearman([r[k] for r in rows], [r["llc"] for r in rows]) for k in MODULAR_READINGS}
    return rows, corr


def format_llc_modular(rows, corr) -> str:
    rc = MODULAR_RECIPE
    lines = [f"Modular addition, grokking run (p = {rc['p']}, one-layer Llama-style transformer d = {rc['d']}, "
             f"{rc['train_fraction']:.0%} of the pairs, full-batch AdamW lr {rc['lr']}, weight decay "
             f"{rc['weight_decay']}, betas {rc['betas']}, float64; readings and λ̂ on the training pairs; gaugec "
             f"uses the true Fisher):", ""]
    lines += md_table(["step", "train loss", "test accuracy", "devinterp λ̂",
                       *(spec[-1] for spec in MODULAR_READINGS.values())],
                      [[r["step"], f"{r['train_loss']:.4f}", f"{r['test_accuracy']:.2f}", f"{r['llc']:.1f}",
                        *(f"{r[k]:.4g}" for k in MODULAR_READINGS)] for r in rows])
    read_n, read_s, llc_n, llc_s = _cost_totals(rows)
    lines += ["", "Spearman with devinterp's λ̂ across the checkpoints: " +
              ", ".join(f"{spec[-1]} {corr[k]:+.2f}" for k, spec in MODULAR_READINGS.items()) + ".", "",
              f"Cost over {len(rows)} checkpoints: devinterp {llc_n:,} samples through forward+backward in "
              f"{llc_s:.0f} s; gaugec ({len({spec[0] for spec in MODULAR_READINGS.values()})} layers) {read_n:,} samples in {read_s:.1f} s ({llc_n / read_n:.0f}x "
              f"fewer samples)."]
    return "\n".join(lines)


def _mean_range(vals) -> str:
    return f"{np.mean(vals):+.2f} [{min(vals):+.2f}, {max(vals):+.2f}]"


def _cell_table(rows, keys) -> list[str]:
    """The first seed's cells, one column per reading."""
    first = [r for r in rows if r["seed"] == rows[0]["seed"]]
    return md_table(["H", "r0", "λ (closed form)", *(RRR_LABELS[k] for k in keys)],
                    [[r["H"], r["r0"], f"{r['lambda']:.1f}", *(f"{r[k]:.4g}" for k in keys)] for r in first])


def _agreement_table(agreement) -> list[str]:
    n_seeds = len(next(iter(agreement.values()))["all"])
    return md_table(["reading", "sign DDS reports", f"Spearman with λ, all 14 cells: mean [min, max], {n_seeds} seeds",
                     "within one H (mean over H = 3, 4, 5)"],
                    [[RRR_LABELS[k], RRR_READINGS.get(k, ("", "", ""))[2], _mean_range(a["all"]),
                      _mean_range(a["within"])] for k, a in agreement.items()])


def format_rrr(rows, agreement) -> str:
    return "\n".join(_cell_table(rows, [*RRR_READINGS, "loss"]) + [""] + _agreement_table(agreement))


def format_llc(rows, agreement) -> str:
    read_n, read_s, llc_n, llc_s = _cost_totals(rows)
    n_seeds = len({r["seed"] for r in rows})
    lines = _cell_table(rows, ["llc", "sigma_min_h", "lambda_min_plus_out", "logdet_plus_out"])
    lines += [""] + _agreement_table(agreement)
    lines += ["", f"Cost over the {len(rows)} cells ({n_seeds} seeds): devinterp {llc_n:,} samples through "
              f"forward+backward in {llc_s:.1f} s; gaugec (both layers) {read_n:,} samples in {read_s:.2f} s: "
              f"{llc_n / read_n:.0f}x fewer samples, {llc_s / max(read_s, 1e-9):.0f}x less wall time."]
    return "\n".join(lines)
