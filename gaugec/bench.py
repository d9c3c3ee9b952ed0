"""Benchmarks and experiments (not timed tests): ``python -m gaugec.bench discover | rrr | llc | step [--write]``.

discover: capture / discover / prove wall time for full-size configs built on the meta device (no weights):
a Llama-3-8B-shaped decoder, GPT-2 small and BERT base, with the lemma cache cold and warm.
rrr: the reduced-rank-regression grid's readings against the closed-form learning coefficient.
llc: the same grid and a modular-addition transformer read by devinterp's SGLD LLC and by gaugec (extra ``llc``).
step: DDCAdam's optimizer step and state against torch AdamW (foreach and fused), CPU and CUDA when present.
``--write`` records each table in docs/benchmarks.md between its markers.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import tempfile
import time

import numpy as np
import torch

from gaugec.capture import capture
from gaugec.discover import discover
from gaugec.prove import lemmas as lemma_mod
from gaugec.pipeline import _to_gauge


def _llama8b():
    from gaugec.zoo import TinyLlama

    with torch.device("meta"):
        m = TinyLlama(vocab=128256, d=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336, eps=1e-5)
    return m, (torch.randint(0, 128256, (1, 8)),)


def _gpt2_small():
    from gaugec.zoo import TinyGPT2

    with torch.device("meta"):
        m = TinyGPT2(vocab=50257, d=768, n_layers=12, n_heads=12, n_pos=1024, tie=True)
    return m, (torch.randint(0, 50257, (1, 8)),)


def _bert_base():
    import transformers

    with torch.device("meta"):
        m = transformers.BertForMaskedLM(transformers.BertConfig())
    return m, (torch.randint(0, 30522, (1, 8)),)


CONFIGS = {"llama3-8b (meta)": _llama8b, "gpt2-small (meta)": _gpt2_small, "bert-base (meta, HF)": _bert_base}


def _prove(gauges, use_cache=True):
    t0 = time.perf_counter()
    for g in gauges:
        g.proof.check(use_cache=use_cache)
    return time.perf_counter() - t0


def bench_discover(names=None) -> list[dict]:
    rows = []
    for name, factory in CONFIGS.items():
        if names and name.split()[0] not in names:
            continue
        try:
            model, inputs = factory()
        except ImportError as exc:
            rows.append({"config": name, "note": f"skipped: {exc}"})
            continue
        n_params = sum(p.numel() for p in model.parameters())
        t0 = time.perf_counter()
        gg = capture(model, inputs)
        t_capture = time.perf_counter() - t0
        t0 = time.perf_counter()
        disc = discover(gg, "cross_entropy")
        gauges = [_to_gauge(fg) for fg in disc.gauges]
        t_discover = time.perf_counter() - t0
        lemma_mod.clear_cache()
        os.environ["GAUGEC_CACHE"] = tempfile.mkdtemp(prefix="gaugec-bench-")
        t_cold = _prove(gauges)
        t_warm = _prove(gauges)
        rows.append({
            "config": name, "params": n_params, "gauges": len(gauges), "generators": sum(g.dim for g in gauges),
            "capture_s": t_capture, "discover_s": t_discover, "prove_cold_s": t_cold, "prove_warm_s": t_warm,
            "total_cold_s": t_capture + t_discover + t_cold, "discover_prove_warm_s": t_discover + t_warm,
            "ok": all(g.proof.symbolic_ok for g in gauges),
        })
        del model, gg, disc, gauges
    return rows


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    """Lines of a Markdown table."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def format_rows(rows) -> str:
    header = ["config", "parameters", "gauges", "generators", "capture s", "discover s", "prove cold s",
              "prove warm s", "end to end (cold) s", "discover + prove (warm) s", "proofs"]
    cells = []
    for r in rows:
        if "note" in r:
            cells.append([r["config"], r["note"]] + [""] * 9)
            continue
        cells.append([r["config"], f"{r['params'] / 1e9:.2f} B", r["gauges"], f"{r['generators']:,}",
                      f"{r['capture_s']:.1f}", f"{r['discover_s']:.1f}", f"{r['prove_cold_s']:.1f}",
                      f"{r['prove_warm_s']:.2f}", f"{r['total_cold_s']:.1f}", f"{r['discover_prove_warm_s']:.1f}",
                      "all hold" if r["ok"] else "FAILED"])
    return "\n".join(_md_table(header, cells))


def write_section(marker: str, text: str, path: str = "docs/benchmarks.md"):
    p = pathlib.Path(path)
    doc = p.read_text() if p.exists() else "# Benchmarks\n"
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    p.write_text(doc)


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
            per_h.append(_spearman([c[key] for c in cells], [c["lambda"] for c in cells]))
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
            "all": {k: _spearman([r[k] for r in rows], [r["lambda"] for r in rows]) for k in keys}}
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
    corr = {k: _spearman([r[k] for r in rows], [r["llc"] for r in rows]) for k in ("sigma_min", "logdet_plus")}
    return rows, corr


def format_llc_modular(rows, corr) -> str:
    lines = _md_table(["step", "train loss", "accuracy (all pairs)", "devinterp λ̂", "gaugec σ_min",
                       "gaugec log det⁺ G"],
                      [[r["step"], f"{r['train_loss']:.3f}", f"{r['accuracy']:.2f}", f"{r['llc']:.2f}",
                        f"{r['sigma_min']:.3g}", f"{r['logdet_plus']:.1f}"] for r in rows])
    read_n, read_s, llc_n, llc_s = _cost_totals(rows)
    lines += ["", f"Samples through forward+backward: devinterp {llc_n:,}, gaugec {read_n:,} ({llc_n / read_n:.0f}x "
              f"fewer); wall time {llc_s:.1f} s against {read_s:.2f} s. Spearman with λ̂ across the checkpoints: "
              f"σ_min {corr['sigma_min']:+.2f}, log det⁺ {corr['logdet_plus']:+.2f}."]
    return "\n".join(lines)


def format_llc(rows, corr) -> str:
    lines = _md_table(["H", "r0", "λ (closed form)", "devinterp λ̂", "gaugec σ_min(X_h)", "gaugec log det⁺ G"],
                      [[r["H"], r["r0"], f"{r['lambda']:.2f}", f"{r['llc']:.2f}", f"{r['sigma_min']:.3g}",
                        f"{r['logdet_plus']:.2f}"] for r in rows])
    read_n, read_s, llc_n, llc_s = _cost_totals(rows)
    a, h = corr["all"], corr["per_h"]
    lines += [""] + _md_table(
        ["method", "samples through forward+backward (grid)", "wall s (grid)", "Spearman with λ, all 14 cells",
         "mean Spearman within H"],
        [["devinterp SGLD LLC", f"{llc_n:,}", f"{llc_s:.1f}", f"{a['llc']:+.2f}", f"{h['llc']:+.2f}"],
         ["gaugec σ_min(X_h)", f"{read_n:,}", f"{read_s:.2f}", f"{a['sigma_min']:+.2f}", f"{h['sigma_min']:+.2f}"],
         ["gaugec log det⁺ G", "(same pass)", "", f"{a['logdet_plus']:+.2f}", f"{h['logdet_plus']:+.2f}"]])
    lines += ["", f"Passes ratio: {llc_n / read_n:.0f}x fewer samples for gaugec's readings; wall-time ratio "
              f"{llc_s / max(read_s, 1e-9):.0f}x."]
    return "\n".join(lines)


def _spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra @ rb) / np.sqrt((ra @ ra) * (rb @ rb)))


def format_rrr(rows, corr) -> str:
    lines = _md_table(["H", "r0", "λ (closed form)", "final loss", "σ_min(X_h)", "λ⁺_min(G_h)", "log det⁺(G_h)",
                       "dead"],
                      [[r["H"], r["r0"], f"{r['lambda']:.1f}", f"{r['loss']:.4f}", f"{r['sigma_min']:.3g}",
                        f"{r['lambda_min_plus']:.3g}", f"{r['logdet_plus']:.2f}", r["n_dead"]] for r in rows])
    lines.append("")
    lines.append("Spearman correlation with λ within each H (mean over H = 3, 4, 5): " +
                 ", ".join(f"{k} {v:+.2f}" for k, v in corr.items()))
    return "\n".join(lines)


def _step_models():
    from gaugec.zoo import TinyGPT2, TinyLlama

    torch.manual_seed(0)
    return {
        "gpt2-small (124M)": (lambda: TinyGPT2(vocab=50257, d=768, n_layers=12, n_heads=12, n_pos=1024),
                              lambda: (torch.randint(0, 50257, (1, 8)),)),
        "llama-style (d 768, 12 layers, GQA 12/4, 110M)": (
            lambda: TinyLlama(vocab=32000, d=768, n_layers=12, n_heads=12, n_kv_heads=4, d_ff=2048, eps=1e-5),
            lambda: (torch.randint(0, 32000, (1, 8)),)),
    }


def _state_bytes(opt) -> int:
    return sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values() if torch.is_tensor(t))


def _executor_bytes(executor) -> int:
    return sum(t.numel() * t.element_size() for st in executor.stages for rg in st.groups for t in (rg.rows, rg.blocks))


def bench_step(device: str = "cpu", repeats: int = 10, only=None) -> list[dict]:
    """Optimizer-step time (gradients fixed, no forward/backward) of DDCAdam against torch AdamW, same run."""
    import gaugec
    from gaugec.optim import DDCAdam

    rows = []
    for name, (make, inputs) in _step_models().items():
        if only and not any(o in name for o in only):
            continue
        model = make()
        plan = gaugec.compile(model, inputs(), loss="cross_entropy", check=False)
        model.to(device)
        gen = torch.Generator().manual_seed(0)
        grads = [torch.randn(p.shape, generator=gen).mul_(1e-3).to(device) for p in model.parameters()]
        n_params = sum(p.numel() for p in model.parameters())
        t0 = time.perf_counter()
        ddc = DDCAdam(model.parameters(), plan, lr=1e-4, weight_decay=0.1)
        canon_s = time.perf_counter() - t0
        opts = {"AdamW foreach": torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, foreach=True),
                "AdamW fused": torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True),
                "DDCAdam": ddc}
        times = {k: [] for k in opts}
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        for p, g in zip(model.parameters(), grads):
            p.grad = g
        for _ in range(2):                                   # warm-up: state allocation
            for opt in opts.values():
                opt.step()
        for _ in range(repeats):                             # interleaved, so drift hits all three alike
            for k, opt in opts.items():
                sync()
                t = time.perf_counter()
                opt.step()
                sync()
                times[k].append(time.perf_counter() - t)
        med = {k: float(np.median(v)) for k, v in times.items()}
        rows.append({"model": name, "device": device, "params": n_params, "gauges": len(plan.gauges),
                     "stages": len(ddc.executor.stages), "canonicalise_s": canon_s,
                     "canonical_sweeps": ddc.canonical_report.get("sweeps"), **{f"{k} ms": v * 1e3 for k, v in med.items()},
                     "vs foreach": med["DDCAdam"] / med["AdamW foreach"], "vs fused": med["DDCAdam"] / med["AdamW fused"],
                     "state ratio": (_state_bytes(ddc) + _executor_bytes(ddc.executor))
                     / _state_bytes(opts["AdamW fused"])})
        print(rows[-1], flush=True)
    return rows


def format_step(rows) -> str:
    header = ["model", "device", "params", "gauges", "AdamW foreach ms", "AdamW fused ms", "DDCAdam ms",
              "DDC / foreach", "DDC / fused", "state (DDC / AdamW)", "canonicalise s (sweeps)"]
    return "\n".join(_md_table(header, [
        [r["model"], r["device"], f"{r['params'] / 1e6:.0f}M", r["gauges"], f"{r['AdamW foreach ms']:.0f}",
         f"{r['AdamW fused ms']:.0f}", f"{r['DDCAdam ms']:.0f}", f"{r['vs foreach']:.2f}x", f"{r['vs fused']:.2f}x",
         f"{r['state ratio']:.4f}", f"{r['canonicalise_s']:.1f} ({r['canonical_sweeps']})"] for r in rows]))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m gaugec.bench")
    sub = ap.add_subparsers(dest="what", required=True)
    d = sub.add_parser("discover", help="capture / discover / prove time on full-size meta-device configs")
    d.add_argument("--only", nargs="*", help="config names (llama3-8b, gpt2-small, bert-base)")
    r = sub.add_parser("rrr", help="reduced-rank regression grid: readings against the closed-form λ")
    lc = sub.add_parser("llc", help="the grid read by gaugec and by devinterp's SGLD LLC (needs devinterp)")
    st = sub.add_parser("step", help="optimizer-step time and state memory: DDCAdam against torch AdamW")
    st.add_argument("--device", default=None, help="cpu or cuda (default: both where CUDA is available)")
    st.add_argument("--only", nargs="*", help="substrings of model names (gpt2, llama)")
    st.add_argument("--repeats", type=int, default=10)
    for parser in (d, r, lc, st):
        parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    args = ap.parse_args(argv)
    if args.what == "step":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        rows = []
        for dev in devices:
            rows += bench_step(dev, args.repeats, args.only)
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
        text = (f"Measured on: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, GPU: {gpu}, "
                f"torch {torch.__version__}.\nCommand: `python -m gaugec.bench step --write` (median of "
                f"{args.repeats} interleaved steps, fixed random gradients)\n\n{format_step(rows)}")
    elif args.what == "llc":
        try:
            import devinterp.optim  # noqa: F401
        except ImportError:
            raise SystemExit("python -m gaugec.bench llc needs devinterp: pip install 'gaugec[llc]'")
        rows, corr = bench_llc()
        mrows, mcorr = bench_llc_modular()
        cal = ", ".join(f"{k} {v}" for k, v in LLC_CALIBRATION.items())
        text = (f"Command: `python -m gaugec.bench llc --write` ({os.cpu_count()} CPU cores). devinterp calibration: "
                f"{cal}, nβ = m / log m (m = batch); the estimator and nβ are devinterp's, driven directly because "
                f"devinterp 2.0's `llc()` takes token datasets only.\n\n{format_llc(rows, corr)}\n\n"
                f"Modular addition (p = 23, one-layer Llama-style transformer, half the pairs, AdamW lr 3e-3, "
                f"weight decay 1, full batch; gaugec reads `mlp.up_proj`):\n\n{format_llc_modular(mrows, mcorr)}")
    elif args.what == "rrr":
        t0 = time.perf_counter()
        rows, corr = bench_rrr()
        text = (f"Command: `python -m gaugec.bench rrr --write` ({time.perf_counter() - t0:.0f} s on "
                f"{os.cpu_count()} CPU cores)\n\n{format_rrr(rows, corr)}")
    else:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        table = format_rows(bench_discover(args.only))
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
        text = f"Measured on: {machine} (CPU only).\nCommand: `python -m gaugec.bench discover --write`\n\n{table}"
    print(text)
    if args.write:
        write_section(f"bench-{args.what}", text)


if __name__ == "__main__":
    main()
