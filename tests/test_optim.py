"""DDCAdam: equivariance against AdamW, canonical invariants, torch.optim behaviour, conservation laws."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F

import gaugec
from gaugec import measure, zoo
from gaugec.optim import DDCAdam
from gaugec.pipeline import model_f

STEPS = 50
LR, WD = 1e-2, 0.1


def _float64(name):
    model, inputs = {"llama_gqa": lambda: zoo.llama_gqa(n_layers=2, eps=1e-6)}.get(name, zoo.ZOO[name])()
    model = model.double()
    inputs = tuple(x.double() if x.is_floating_point() else x for x in inputs)
    return model, inputs


@pytest.fixture(scope="module", params=["llama_gqa", "gpt2", "relu_mlp"])
def setup(request):
    model, inputs = _float64(request.param)
    plan = gaugec.compile(model, inputs, loss="cross_entropy")
    out = model_f(model, inputs, "cross_entropy")
    gen = torch.Generator().manual_seed(5)
    batches = [torch.randint(0, out.shape[-1], out.shape[:-1], generator=gen) for _ in range(STEPS)]
    return request.param, model, inputs, plan, batches


def _train(model, inputs, plan, batches, element, optimizer, steps=STEPS, **kw):
    """Train a copy of ``model`` moved by ``element``; returns the log-probabilities after every step and the model."""
    m = copy.deepcopy(model)
    bound = plan.bind(m)
    if element is not None:
        bound.act(element)
    opt = (DDCAdam(m.parameters(), bound, lr=LR, weight_decay=WD, **kw) if optimizer == "ddc"
           else torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=WD))
    trace = []
    for y in batches[:steps]:
        opt.zero_grad()
        lp = model_f(m, inputs, "cross_entropy")
        F.nll_loss(lp.reshape(-1, lp.shape[-1]), y.reshape(-1)).backward()
        opt.step()
        with torch.no_grad():
            trace.append(model_f(m, inputs, "cross_entropy"))
    return torch.stack(trace), m


def _worst_step_gap(a, b) -> float:
    dims = tuple(range(1, a.dim()))
    return float(((a - b).abs().amax(dim=dims) / a.abs().amax(dim=dims)).max())


def _element(plan, only=None, seed=1):
    gen = torch.Generator().manual_seed(seed)
    el = plan.random_element(gen, spread=100.0, gl_spread=3.0)
    if only is not None:
        el = [e if g.family == only else g.identity_element() for g, e in zip(plan.gauges, el)]
    return el


def test_ddcadam_is_equivariant_for_all_families_together_and_adamw_is_not(setup):
    name, model, inputs, plan, batches = setup
    g = _element(plan)
    ref, _ = _train(model, inputs, plan, batches, None, "ddc")
    moved, _ = _train(model, inputs, plan, batches, g, "ddc")
    assert _worst_step_gap(ref, moved) <= 1e-9, name
    ref_w, _ = _train(model, inputs, plan, batches, None, "adamw")
    moved_w, _ = _train(model, inputs, plan, batches, g, "adamw")
    assert _worst_step_gap(ref_w, moved_w) >= 1e-3, name


def _adamw_breaks(plan, family) -> bool:
    """AdamW is already equivariant for a translation that no bias absorbs (the gradient does not change, and
    weight decay shrinks a translation into a translation); every other family breaks it."""
    return any(g.kind == "mult" or any(lg.role == "absorb" for lg in g.legs) for g in plan.gauges
               if g.family == family)


def test_ddcadam_is_equivariant_family_by_family(setup):
    name, model, inputs, plan, batches = setup
    ref, _ = _train(model, inputs, plan, batches, None, "ddc")
    ref_w, _ = _train(model, inputs, plan, batches, None, "adamw")
    families = sorted({g.family for g in plan.gauges})
    assert len(families) >= 2
    for fam in families:
        g = _element(plan, only=fam, seed=hash(fam) % 1000)
        moved, _ = _train(model, inputs, plan, batches, g, "ddc")
        assert _worst_step_gap(ref, moved) <= 1e-9, (name, fam)
        moved_w, _ = _train(model, inputs, plan, batches, g, "adamw")
        gap_w = _worst_step_gap(ref_w, moved_w)
        if _adamw_breaks(plan, fam):
            assert gap_w >= 1e-3, (name, fam, gap_w)
        else:
            assert gap_w <= 1e-9, (name, fam, gap_w)


def _invariants(m, name) -> list[torch.Tensor]:
    """Quantities constant on the orbits of every gauge the plan finds (effective weights: gains folded in)."""
    if name == "relu_mlp":
        head = m[4].weight - m[4].weight.mean(0, keepdim=True)     # the logit shift moves the head's class mean
        return [head @ m[2].weight @ m[0].weight]                # both rescales cancel in the product
    if name == "gpt2":
        b = m.blocks[0]
        W = b.c_attn.weight * b.ln_1.weight
        bias = b.c_attn.weight @ b.ln_1.bias + b.c_attn.bias   # LayerNorm bias and c_attn bias, as the scores see them
        q, k, v = W.split(W.shape[1], 0)
        bq = bias[:W.shape[1]]
        out = []
        for h in range(b.h):
            s = slice(h * b.dh, (h + 1) * b.dh)
            out.append(torch.cat([q[s], bq[s, None]], 1).T @ k[s])      # the key bias is itself a gauge
            Wo = b.c_proj.weight - b.c_proj.weight.mean(0, keepdim=True)   # the residual's mean is a gauge (LN reads it)
            out.append(Wo[:, s] @ v[s])
        return out
    out = []
    for layer in m.layers:
        att, mlp = layer.self_attn, layer.mlp
        g1, g2 = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
        Wq, Wk, Wv = att.q_proj.weight * g1, att.k_proj.weight * g1, att.v_proj.weight * g1
        rep = att.h // att.hkv
        for h in range(att.h):
            s, kv = slice(h * att.dh, (h + 1) * att.dh), slice((h // rep) * att.dh, (h // rep + 1) * att.dh)
            out.append(Wq[s].T @ Wk[kv])
            out.append(att.o_proj.weight[:, s] @ Wv[kv])
        out.append(mlp.down_proj.weight @ (mlp.up_proj.weight * g2))
        out.append(mlp.gate_proj.weight * g2)
    W = m.lm_head.weight * m.norm.weight
    out.append(W - W.mean(0, keepdim=True))
    return out


def test_canonical_invariants_agree_between_the_two_runs(setup):
    name, model, inputs, plan, batches = setup
    g = _element(plan)
    _, a = _train(model, inputs, plan, batches, None, "ddc", steps=20)
    _, b = _train(model, inputs, plan, batches, g, "ddc", steps=20)
    _, a_w = _train(model, inputs, plan, batches, None, "adamw", steps=20)
    _, b_w = _train(model, inputs, plan, batches, g, "adamw", steps=20)
    with torch.no_grad():
        moved = copy.deepcopy(model)
        plan.bind(moved).act(g)
        for x, y in zip(_invariants(model, name), _invariants(moved, name)):   # they are invariants
            assert float((x - y).abs().max() / x.abs().max()) <= 1e-9
        gaps = [float((x - y).abs().max() / x.abs().max()) for x, y in zip(_invariants(a, name), _invariants(b, name))]
        gaps_w = [float((x - y).abs().max() / x.abs().max())
                  for x, y in zip(_invariants(a_w, name), _invariants(b_w, name))]
    assert max(gaps) <= 1e-9, (name, gaps)
    assert max(gaps_w) >= 1e-3, (name, gaps_w)
