"""`python -m gaugec.bench WHAT [--write]`: run one benchmark, print its table, record it with --write."""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from gaugec.bench.coverage import bench_coverage, format_coverage
from gaugec.bench.ddc import bench_equivariance, bench_parity, format_ddc
from gaugec.bench.discovery import bench_discover, format_rows
from gaugec.bench.distributed import bench_distributed, format_distributed
from gaugec.bench.readings import LLC_CALIBRATION, LLC_ROWS, bench_llc, bench_llc_modular, bench_rrr, format_llc, \
    format_llc_modular, format_rrr
from gaugec.bench.realsize import bench_realsize, format_realsize
from gaugec.bench.step import bench_step, format_step
from gaugec.bench.tables import dump_rows, write_section
from gaugec.bench.trust import bench_construction, bench_training, format_trust


def _machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def _parser() -> argparse.ArgumentParser:
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
    dd = sub.add_parser("ddc", help="equivariance and parity of DDCAdam / DDCMuon against AdamW / Muon + AdamW")
    dd.add_argument("--seeds", type=int, default=2)
    tr = sub.add_parser("trust", help="DDCAdam on zero-init / LoRA / rank-deficient models against AdamW")
    tr.add_argument("--steps", type=int, default=200)
    tr.add_argument("--seeds", type=int, default=2)
    rs = sub.add_parser("realsize", help="compile + plan.dim with real weights (4→4096→3 MLP, GPT-2 small)")
    rs.add_argument("--only", nargs="*", help="substrings of config names (mlp, gpt2)")
    cv = sub.add_parser("coverage", help="every HF causal-LM / masked-LM / image model, tiny: compiled, sound, found "
                                         "/ oracle (docs/coverage.md)")
    cv.add_argument("--only", nargs="*", help="model types (llama, gpt2, vit, ...)")
    cv.add_argument("--resume", action="store_true", help="keep the rows of docs/data/coverage_rows.jsonl and run "
                    "only the architectures not there yet")
    cv.add_argument("--budget", type=float, help="start no architecture after this many seconds (a partial table; "
                    "--resume goes on)")
    ds = sub.add_parser("distributed", help="FSDP2 + DDCAdam on 1, 2, 4 CPU processes: state per rank, step time "
                                            "against FSDP2 + fused AdamW")
    ds.add_argument("--worlds", nargs="*", type=int, default=[1, 2, 4])
    ds.add_argument("--repeats", type=int, default=10)
    for parser in (d, r, lc, st, dd, tr, rs, cv, ds):
        parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    return ap


def main(argv=None):
    args = _parser().parse_args(argv)
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
        rows, agreement = bench_llc()
        mrows, mcorr = bench_llc_modular()
        if args.write:
            dump_rows(LLC_ROWS, {"grid": rows, "modular": mrows})
        cal = ", ".join(f"{k} {v}" for k, v in LLC_CALIBRATION.items())
        text = (f"Command: `python -m gaugec.bench llc --write` ({os.cpu_count()} CPU cores; rows saved to "
                f"`{LLC_ROWS}` for `examples/plot_llc_comparison.py`). devinterp calibration: {cal}, nβ = m / log m "
                f"(m = batch); the estimator and nβ are devinterp's, driven directly because devinterp 2.0's `llc()` "
                f"takes token datasets only.\n\n{format_llc(rows, agreement)}\n\n{format_llc_modular(mrows, mcorr)}")
    elif args.what == "ddc":
        t0 = time.perf_counter()
        table = format_ddc(bench_equivariance(), bench_parity(range(args.seeds)))
        text = (f"Command: `python -m gaugec.bench ddc --write` (seeds 0..{args.seeds - 1}, "
                f"{time.perf_counter() - t0:.0f} s on {os.cpu_count()} CPU cores)\n\n{table}")
    elif args.what == "trust":
        t0 = time.perf_counter()
        table = format_trust(bench_construction(), bench_training(range(args.seeds), args.steps))
        text = (f"Command: `python -m gaugec.bench trust --write` ({args.steps} steps, seeds 0..{args.seeds - 1}, "
                f"{time.perf_counter() - t0:.0f} s on {os.cpu_count()} CPU cores)\n\n{table}")
    elif args.what == "coverage":
        import transformers

        t0 = time.perf_counter()
        rows, asked = bench_coverage(args.only, resume=args.resume, budget_s=args.budget)
        table = format_coverage(rows)
        if len(rows) < asked:
            table = (f"**Partial: {len(rows)} of {asked} architectures** (stopped at --budget; `--resume` goes on "
                     f"from `docs/data/coverage_rows.jsonl`).\n\n{table}")
        took = (f"{sum(r.get('seconds', 0.0) for r in rows):.0f} s summed over the rows, gathered by --resume runs"
                if args.resume else f"{time.perf_counter() - t0:.0f} s")
        text = (f"Command: `python -m gaugec.bench coverage --write` (transformers {transformers.__version__}, "
                f"torch {torch.__version__}, {took} on {os.cpu_count()} CPU cores)\n\n{table}")
        print(text)
        if args.write:
            write_section("bench-coverage", text, path="docs/coverage.md")
        return
    elif args.what == "realsize":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        text = (f"Measured on: {_machine()} (CPU only).\nCommand: `python -m gaugec.bench realsize --write` (one "
                f"process, the models in turn: peak RSS is cumulative)\n\n{format_realsize(bench_realsize(args.only))}")
    elif args.what == "distributed":
        text = (f"Measured on: {_machine()} (CPU only, gloo, one thread per process).\nCommand: "
                f"`python -m gaugec.bench distributed --write` (median of {args.repeats} interleaved steps, the slowest rank's)\n\n"
                f"{format_distributed(bench_distributed(args.worlds, args.repeats))}")
    elif args.what == "rrr":
        t0 = time.perf_counter()
        rows, agreement = bench_rrr()
        text = (f"Command: `python -m gaugec.bench rrr --write` ({time.perf_counter() - t0:.0f} s on "
                f"{os.cpu_count()} CPU cores)\n\n{format_rrr(rows, agreement)}")
    else:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        table = format_rows(bench_discover(args.only))
        text = f"Measured on: {_machine()} (CPU only).\nCommand: `python -m gaugec.bench discover --write`\n\n{table}"
    print(text)
    if args.write:
        write_section(f"bench-{args.what}", text)


if __name__ == "__main__":
    main()
