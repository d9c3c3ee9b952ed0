"""Compile + orbit dimension with real weights at real size, against the time torch.export takes to capture.

Issue 14's target: compile + ``plan.dim`` ≤ 10 x capture, memory O(parameters). Every stage is timed in one process
(capture alone first, then ``gaugec.compile``'s own stages, then ``plan.dim``)."""
from __future__ import annotations

import resource
import time

import torch
from torch import nn

import gaugec
from gaugec.bench.tables import md_table
from gaugec.capture import capture
from gaugec.progress import track


def _wide_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4096), nn.ReLU(), nn.Linear(4096, 3)), (torch.randn(5, 4),)


def _gpt2_small():
    import transformers

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(use_cache=False)).eval()
    return model, (torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(0)),)


CONFIGS = {"mlp 4→4096→3": _wide_mlp, "gpt2-small (HF, random weights)": _gpt2_small}


def bench_realsize(only=None) -> list[dict]:
    rows = []
    for name, build in track(list(CONFIGS.items()), "realsize", label=lambda item: item[0]):
        if only and not any(o in name for o in only):
            continue
        try:
            model, inputs = build()
        except ImportError as exc:
            rows.append({"config": name, "skipped": str(exc)})
            continue
        t = time.perf_counter()
        capture(model, inputs)
        t_capture = time.perf_counter() - t
        t = time.perf_counter()
        plan = gaugec.compile(model, inputs, memo=False)    # a first compile: discovery runs
        t_compile = time.perf_counter() - t
        t = time.perf_counter()
        dim = plan.dim
        t_dim = time.perf_counter() - t
        n = sum(p.numel() for p in model.parameters())
        rows.append({"config": name, "params": n, "gauges": len(plan.gauges),
                     "generators": sum(g.dim for g in plan.gauges), "dim": dim, "capture": t_capture,
                     "timings": dict(plan.timings), "compile": t_compile, "dim_s": t_dim,
                     "ratio": (t_compile + t_dim) / t_capture,
                     "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                     "weights_gib": n * 4 / 2**30})
    return rows


def format_realsize(rows) -> str:
    table = []
    for r in rows:
        if "skipped" in r:
            table.append([r["config"], "skipped: " + r["skipped"]] + [""] * 9)
            continue
        tm = r["timings"]
        table.append([r["config"], f"{r['params'] / 1e6:.1f} M", f"{r['generators']:,}", f"{r['dim']:,}",
                      f"{r['capture']:.1f}", f"{tm.get('discover', 0):.1f}", f"{tm.get('prove', 0):.1f}",
                      f"{tm.get('numeric', 0):.1f}", f"{r['dim_s']:.1f}", f"{r['ratio']:.1f}x",
                      f"{r['rss_gib']:.1f} ({r['weights_gib']:.2f})"])
    return "\n".join(md_table(["config", "parameters", "generators", "plan.dim", "capture s", "discover s", "prove s",
                     "numeric s", "plan.dim s", "(compile + dim) / capture", "peak RSS GiB (weights fp32)"],
                              table))
