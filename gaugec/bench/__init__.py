"""Benchmarks and experiments (not timed tests): ``python -m gaugec.bench discover | rrr | llc | step | ddc |
trust [--write]``.

discover: capture / discover / prove wall time for full-size configs built on the meta device (no weights):
a Llama-3-8B-shaped decoder, GPT-2 small and BERT base, with the lemma cache cold and warm.
rrr: the reduced-rank-regression grid's readings against the closed-form learning coefficient.
llc: the same grid and a modular-addition transformer read by devinterp's SGLD LLC and by gaugec (extra ``llc``).
step: DDCAdam's optimizer step and state against torch AdamW (foreach and fused), and DDCMuon's against
torch.optim.Muon + AdamW, CPU and CUDA when present.
ddc: equivariance (float64, 50 steps) and parity of DDCAdam and DDCMuon against AdamW and torch.optim.Muon + AdamW.
trust: DDCAdam on zero-initialised, LoRA, rank-deficient, dead-unit and zero-gain models: construction and training.
``--write`` records each table in docs/benchmarks.md between its markers.
"""
from gaugec.bench.cli import main  # noqa: F401
