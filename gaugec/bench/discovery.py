"""Capture / discover / prove wall time for full-size configs built on the meta device (no weights)."""
from __future__ import annotations

import os
import tempfile
import time

import torch

from gaugec.bench.tables import md_table
from gaugec.progress import track
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
    """Per config, in one run: capture; a first compile's discovery (the memo misses and is written) and cold proofs
    (sympy runs); a second compile's discovery (read from the memo) and warm proofs (the lemma cache)."""
    rows = []
    os.environ["GAUGEC_CACHE"] = tempfile.mkdtemp(prefix="gaugec-bench-")
    for name, factory in track(list(CONFIGS.items()), "discover", label=lambda item: item[0]):
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
        first = discover(gg, "cross_entropy", memo=True)
        t_discover = time.perf_counter() - t0
        lemma_mod.clear_cache()
        t_cold = _prove(first.gauges)
        t0 = time.perf_counter()
        second = discover(gg, "cross_entropy", memo=True)
        t_memo = time.perf_counter() - t0
        if first.from_memo or not second.from_memo or len(second.gauges) != len(first.gauges):
            raise RuntimeError(f"{name}: the discovery memo did not behave (first from memo: {first.from_memo}, "
                               f"second: {second.from_memo})")
        t_warm = _prove(second.gauges)
        gauges = first.gauges
        rows.append({
            "config": name, "params": n_params, "gauges": len(gauges), "generators": sum(g.dim for g in gauges),
            "capture_s": t_capture, "discover_s": t_discover, "prove_cold_s": t_cold, "discover_memo_s": t_memo,
            "prove_warm_s": t_warm, "total_cold_s": t_capture + t_discover + t_cold,
            "discover_prove_warm_s": t_memo + t_warm,
            "ok": all(g.proof.symbolic_ok for g in gauges) and all(g.proof.symbolic_ok for g in second.gauges),
        })
        del model, gg, first, second, gauges
    return rows


def format_rows(rows) -> str:
    header = ["config", "parameters", "gauges", "generators", "capture s", "discover s", "prove cold s",
              "first compile / capture", "discover (memo) s", "prove warm s", "second compile's discover + prove / "
              "capture", "proofs"]
    cells = []
    for r in rows:
        if "note" in r:
            cells.append([r["config"], r["note"]] + [""] * 10)
            continue
        cells.append([r["config"], f"{r['params'] / 1e9:.2f} B", r["gauges"], f"{r['generators']:,}",
                      f"{r['capture_s']:.1f}", f"{r['discover_s']:.1f}", f"{r['prove_cold_s']:.1f}",
                      f"{r['total_cold_s'] / r['capture_s']:.2f}×", f"{r['discover_memo_s']:.2f}",
                      f"{r['prove_warm_s']:.2f}", f"{r['discover_prove_warm_s'] / r['capture_s']:.2f}×",
                      "all hold" if r["ok"] else "FAILED"])
    return "\n".join(md_table(header, cells))
