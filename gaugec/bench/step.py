"""One optimizer step of DDCAdam against torch AdamW (foreach and fused), and of DDCMuon against torch.optim.Muon +
AdamW (the same routing): time and state memory."""
from __future__ import annotations

import time

import numpy as np
import torch

from gaugec.bench.tables import md_table


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
    """The executor's index tensors and its per-step work buffers."""
    return sum(t.numel() * t.element_size() for st in executor.stages for rg in st.groups for t in (rg.rows, rg.blocks)) \
        + sum(t.numel() * t.element_size() for t in executor._work.values())


def bench_step(device: str = "cpu", repeats: int = 10, only=None) -> list[dict]:
    """Optimizer-step time (gradients fixed, no forward/backward) of DDCAdam against torch AdamW, same run."""
    import gaugec
    from gaugec.optim import DDCAdam, DDCMuon
    from gaugec.optim.tasks import MuonAdamW

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
        ddc_muon = DDCMuon(model.parameters(), plan, lr=1e-4, adamw_lr=1e-4)
        muon = MuonAdamW(model, plan, lr=1e-4, adamw_lr=1e-4)
        opts = {"AdamW foreach": torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, foreach=True),
                "AdamW fused": torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True),
                "DDCAdam": ddc, "Muon + AdamW": muon, "DDCMuon": ddc_muon}
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
        split = {}
        for key, opt in (("DDCAdam", ddc), ("DDCMuon", ddc_muon)):   # after the timed steps: laps cost a little
            clock = opt.phase_clock()
            for _ in range(repeats):
                opt.step()
            opt.phase_clock(False)
            split[key] = {phase: 1e3 * t / repeats for phase, t in clock.totals.items()}
        rows.append({"model": name, "device": device, "params": n_params, "gauges": len(plan.gauges),
                     "stages": len(ddc.executor.stages), "canonicalise_s": canon_s,
                     "canonical_sweeps": ddc.canonical_report.get("sweeps"), **{f"{k} ms": v * 1e3 for k, v in med.items()},
                     "vs foreach": med["DDCAdam"] / med["AdamW foreach"], "vs fused": med["DDCAdam"] / med["AdamW fused"],
                     "state ratio": (_state_bytes(ddc) + _executor_bytes(ddc.executor))
                     / _state_bytes(opts["AdamW fused"]),
                     "muon vs torch": med["DDCMuon"] / med["Muon + AdamW"],
                     "muon state ratio": (_state_bytes(ddc_muon) + _executor_bytes(ddc_muon.executor))
                     / (_state_bytes(muon.muon) + _state_bytes(muon.adamw)),
                     "split": split})
        print(rows[-1], flush=True)
    return rows


def format_step(rows) -> str:
    header = ["model", "device", "params", "gauges", "AdamW foreach ms", "AdamW fused ms", "DDCAdam ms",
              "DDC / foreach", "DDC / fused", "state (DDC / AdamW)", "canonicalise s (sweeps)"]
    adam = md_table(header, [
        [r["model"], r["device"], f"{r['params'] / 1e6:.0f}M", r["gauges"], f"{r['AdamW foreach ms']:.0f}",
         f"{r['AdamW fused ms']:.0f}", f"{r['DDCAdam ms']:.0f}", f"{r['vs foreach']:.2f}x", f"{r['vs fused']:.2f}x",
         f"{r['state ratio']:.4f}", f"{r['canonicalise_s']:.1f} ({r['canonical_sweeps']})"] for r in rows])
    muon = md_table(["model", "device", "Muon + AdamW ms", "DDCMuon ms", "DDCMuon / (Muon + AdamW)",
                     "state (DDCMuon / Muon + AdamW)"], [
        [r["model"], r["device"], f"{r['Muon + AdamW ms']:.0f}", f"{r['DDCMuon ms']:.0f}", f"{r['muon vs torch']:.2f}x",
         f"{r['muon state ratio']:.4f}"] for r in rows])
    split = md_table(["model", "optimizer", *(f"{p} ms" for p in PHASES)], [
        [r["model"], key, *(f"{r['split'][key].get(p, 0.0):.1f}" for p in PHASES)]
        for r in rows if "split" in r for key in r["split"]])
    return "\n".join(adam + [""] + muon + [""] + split)


# the per-step work in the order it runs (gaugec.optim.section.PhaseClock)
PHASES = ("non-finite check", "base step", "statistics", "solves", "application")
