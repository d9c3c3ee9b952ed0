"""The fast paths of the per-step sweep agree with the general ones they stand in for (docs/ddc.md, "Fused
execution"): head rows read as views against gathered rows, a RoPE pair's common-scale step by row norms against
its Gram, chunked column sums against the plain reduction, the Cayley step by Newton–Schulz inverses against LU solves."""
import dataclasses

import pytest
import torch

import gaugec
import gaugec.groups as groups
from gaugec import zoo
from gaugec.optim import DDCAdam
from gaugec.optim.section import _column_square_sums


def _executor(model, vocab):
    plan = gaugec.compile(model, (torch.randint(0, vocab, (1, 6)),), loss="cross_entropy", check=False)
    opt = DDCAdam(model.parameters(), plan, lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():                          # off the section, so every stage has work to do
        for p in opt._named.values():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return opt.executor, {k: v.detach() for k, v in opt._named.items()}


def _sweep(executor, stages, params):
    work = {k: v.clone() for k, v in params.items()}
    for st in stages:
        executor.balance_stage(st, work, exact=False)
    return work


def _largest_gap(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_head_rows_read_as_views_match_gathered_rows(name):
    torch.manual_seed(0)
    model = (zoo.TinyGPT2(vocab=32, d=16, n_layers=2, n_heads=2, n_pos=8) if name == "gpt2" else
             zoo.TinyLlama(vocab=32, d=16, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=24, eps=1e-5)).double()
    executor, params = _executor(model, 32)
    gl = [st for st in executor.stages if st.kind == "gl"]
    assert gl and any(rg.span is not None for st in gl for rg in st.groups)
    fast = _sweep(executor, gl, params)
    gathered = [dataclasses.replace(st, groups=[dataclasses.replace(rg) for rg in st.groups]) for st in gl]
    for st in gathered:
        for rg in st.groups:
            rg.span = None
    slow = _sweep(executor, gathered, params)
    assert _largest_gap(fast, slow) <= 1e-14
    assert _largest_gap(fast, params) > 1e-6           # the sweep did move the rows


def test_a_rope_pairs_step_by_row_norms_matches_its_gram(monkeypatch):
    torch.manual_seed(0)
    model = zoo.TinyLlama(vocab=32, d=16, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=24, eps=1e-5).double()
    executor, params = _executor(model, 32)
    rot2 = [st for st in executor.stages if st.kind == "rot2"]
    assert rot2
    by_norms = _sweep(executor, rot2, params)
    monkeypatch.setitem(groups.BLOCK_KINDS, "rot2", dataclasses.replace(groups.BLOCK_KINDS["rot2"],
                                                                        scalar_step=False))
    by_gram = _sweep(executor, rot2, params)
    assert _largest_gap(by_norms, by_gram) <= 1e-14
    assert _largest_gap(by_norms, params) > 1e-6


@pytest.mark.parametrize("axis", [0, 1])
def test_chunked_column_square_sums_match_the_plain_reduction(axis):
    x = torch.randn(700, 600, dtype=torch.float64)     # 420 000 entries: more than one chunk
    plain = x.square().sum(dim=1 - axis)
    assert torch.allclose(_column_square_sums(x, axis, torch.float64), plain, rtol=1e-13, atol=0)
    assert torch.allclose(_column_square_sums(x.float(), axis, torch.float32), plain.float(), rtol=1e-5, atol=0)
    low = x.bfloat16()                                  # squared in float32, after the conversion
    assert torch.allclose(_column_square_sums(low, axis, torch.float32), low.float().square().sum(dim=1 - axis),
                          rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_cayley_step_by_newton_schulz_inverses_is_exact_and_matches_lu_solves(dtype):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(6, 8, 20, generator=gen, dtype=torch.float64)
    Y = torch.randn(6, 8, 30, generator=gen, dtype=torch.float64)
    P, Q = X @ X.mT, Y @ Y.mT
    A, A_dual = groups.kind("gl").first_order(P.to(dtype), Q.to(dtype))
    tol = 1e-14 if dtype == torch.float64 else 2e-6      # float32: a few units in the last place, as a Cholesky gives
    eye = torch.eye(8, dtype=torch.float64)
    assert float((A.double() @ A_dual.double().mT - eye).abs().max()) <= tol   # A^-T exact: the function is unchanged
    step = 0.25 * (Q - P) / torch.linalg.matrix_norm(P + Q)[:, None, None]
    step = 0.5 * (step + step.mT)
    reference = torch.linalg.solve(eye - step, eye + step)
    assert float((A.double() - reference).abs().max()) <= tol
