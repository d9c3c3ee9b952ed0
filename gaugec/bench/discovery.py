"""Capture / discover / prove wall time for full-size configs built on the meta device (no weights)."""
from __future__ import annotations

import os
import tempfile
import time

import torch

from gaugec.bench.tables import md_table
from gaugec.capture import capture
from gaugec.discover import discover
from gaugec.prove import lemmas as lemma_mod


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
        gauges = disc.gauges
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
    return "\n".join(md_table(header, cells))
