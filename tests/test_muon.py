"""DDCMuon: equivariance against torch.optim.Muon + AdamW, routing, torch.optim behaviour, parity (docs/ddc.md)."""
import copy

import pytest
import torch

import gaugec
from gaugec import zoo
from gaugec.optim import DDCMuon, muon_parameters, tasks
from .test_optim import _adamw_breaks, _closure_steps, _compiled_step_agrees, _element, _HostReads, _lm, _lm_loss, _resume_from_checkpoint, \
    _steps, _worst_step_gap

HP = dict(lr=2e-2, adamw_lr=1e-2, weight_decay=0.1)


def _train(model, inputs, plan, batches, element, optimizer):
    """log-probabilities after every step of a copy of ``model`` moved by ``element``."""
    def make(m, bound):
        return DDCMuon(m.parameters(), bound, **HP) if optimizer == "ddc" else tasks.MuonAdamW(m, bound, **HP)

    return tasks.run_from(model, inputs, plan, batches, element, make)[0]


def test_ddcmuon_is_equivariant_for_all_families_and_each_alone_and_muon_is_not(setup):
    name, model, inputs, plan, batches = setup
    ref = _train(model, inputs, plan, batches, None, "ddc")
    ref_m = _train(model, inputs, plan, batches, None, "muon")
    families = sorted({g.family for g in plan.gauges})
    assert len(families) >= 2
    cases = [("all", _element(plan))] + [(fam, _element(plan, only=fam, seed=201 + i))
                                          for i, fam in enumerate(families)]
    gaps = {}
    for label, g in cases:
        gaps[label] = (_worst_step_gap(ref, _train(model, inputs, plan, batches, g, "ddc")),
                       _worst_step_gap(ref_m, _train(model, inputs, plan, batches, g, "muon")))
    assert all(d <= 1e-9 for d, _ in gaps.values()), (name, gaps)
    assert gaps["all"][1] >= 1e-3, (name, gaps)
    # a translation whose changes do not depend on the point leaves Muon + AdamW equivariant too; every other family
    # breaks it
    for fam in families:
        if _adamw_breaks(plan, fam):
            assert gaps[fam][1] >= 1e-3, (name, fam, gaps[fam])


def test_routing_sends_hidden_matrices_to_muon_and_the_rest_to_adamw():
    model, inputs, plan = _lm()
    names = muon_parameters(plan)
    assert "lm_head.weight" not in names and "embed_tokens.weight" not in names
    assert {f"layers.{i}.{m}.weight" for i in range(2) for m in ("self_attn.q_proj", "self_attn.o_proj",
                                                                  "mlp.down_proj")} <= names
    opt = DDCMuon(model.parameters(), plan)
    named = {id(p): n for n, p in model.named_parameters()}
    muon = {named[id(p)] for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    assert muon == names
    assert all(g["lr"] == 3e-4 for g in opt.param_groups if not g["use_muon"])
    with pytest.raises(ValueError, match="2-D"):
        DDCMuon([{"params": [model.norm.weight], "use_muon": True}], plan)
    # a user group overrides the rule: the head on Muon, at its own lr
    head = model.lm_head.weight
    rest = [p for p in model.parameters() if p is not head]
    opt = DDCMuon([{"params": rest}, {"params": [head], "use_muon": True, "lr": 1e-3}], plan)
    assert next(g for g in opt.param_groups if any(p is head for p in g["params"]))["use_muon"]
    gpt, inputs = zoo.gpt2()
    assert "lm_head.weight" not in muon_parameters(gaugec.compile(gpt, inputs))     # tied to the embedding


def test_state_dict_resumes_bit_exactly_and_nan_steps_are_skipped_without_host_sync():
    model, inputs, _, opt, opt2, saved = _resume_from_checkpoint(lambda m, plan: DDCMuon(m.parameters(), plan, **HP),
                                                                 3)
    bad = copy.deepcopy(saved)
    first_muon = next(i for i, s in bad["state"].items() if "momentum_buffer" in s)
    bad["state"][first_muon]["momentum_buffer"] = torch.zeros(3)
    with pytest.raises(ValueError, match="momentum_buffer has shape"):
        opt2.load_state_dict(bad)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bufs = {n: opt.state[p]["momentum_buffer"].clone() for n, p in model.named_parameters()
            if "momentum_buffer" in opt.state[p]}
    opt.zero_grad()
    _lm_loss(model, inputs).backward()
    model.layers[0].mlp.up_proj.weight.grad[0, 0] = float("nan")
    with _HostReads() as watch:
        opt.step()
    assert watch.seen == []
    assert opt.skipped_steps == 1
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    for n, b in bufs.items():
        assert torch.equal(opt.state[dict(model.named_parameters())[n]]["momentum_buffer"], b), n


def test_param_groups_schedulers_closures_low_precision_and_compile():
    model, inputs, plan = _lm()
    opt = DDCMuon(model.parameters(), plan, lr=2e-2, adamw_lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    losses = _closure_steps(model, inputs, opt, sched)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-2 * 0.5 ** 4, 1e-2 * 0.5 ** 4])
    assert losses[-1] < losses[0]
    for dtype in (torch.float32, torch.bfloat16):
        model, inputs, plan = _lm()
        model.to(dtype)
        opt = DDCMuon(model.parameters(), plan.bind(model), lr=2e-2, adamw_lr=3e-2)
        first = float(_lm_loss(model, inputs))
        for _ in range(20):                          # the same labels every step: the loss must fall
            opt.zero_grad()
            _lm_loss(model, inputs).backward()
            opt.step()
        assert all(p.dtype == dtype and bool(torch.isfinite(p).all()) for p in model.parameters())
        assert float(_lm_loss(model, inputs)) < 0.8 * first
    _compiled_step_agrees(lambda m, plan: DDCMuon(m.parameters(), plan, **HP), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("task", ["classifier", "char_lm"])
def test_ddcmuon_trains_as_well_as_muon_with_adamw(task):
    """Same steps, batches and hyperparameters: within 5% of torch.optim.Muon + AdamW's validation loss."""
    train, hp = {"classifier": (lambda f: tasks.train_classifier(f, steps=300),
                                dict(lr=5e-3, adamw_lr=3e-3, weight_decay=0.1)),
                 "char_lm": (lambda f: tasks.train_char_lm(f, steps=200),
                             dict(lr=2e-2, adamw_lr=3e-3, weight_decay=0.1))}[task]
    muon = train(tasks.muon_factory(**hp))
    ddc = train(tasks.ddcmuon_factory(**hp))
    assert ddc.final_val <= 1.05 * muon.final_val, (ddc.final_val, muon.final_val)
    assert ddc.val[-1] < 0.9 * ddc.val[0] or ddc.train[-1] < 0.9 * ddc.train[0]


def test_batched_newton_schulz_matches_one_matrix_at_a_time_and_orthogonalises():
    from gaugec.optim.muon import newton_schulz

    gen = torch.Generator().manual_seed(0)
    G = torch.randn(5, 6, 9, dtype=torch.float64, generator=gen)
    batched = newton_schulz(G, dtype=torch.float64)
    for g, b in zip(G, batched):
        assert torch.allclose(newton_schulz(g, dtype=torch.float64), b, atol=1e-12)
        s = torch.linalg.svdvals(b)
        assert 0.6 < float(s.min()) and float(s.max()) < 1.3          # the quintic's band around 1
        U, _, Vh = torch.linalg.svd(g, full_matrices=False)          # and the polar factor's singular vectors
        assert torch.allclose(U.T @ b @ Vh.T, torch.diag(torch.diagonal(U.T @ b @ Vh.T)), atol=1e-9)
    tall = newton_schulz(G.mT, dtype=torch.float64)
    assert torch.allclose(tall, batched.mT, atol=1e-12)
    model, inputs, plan = _lm()
    twin = copy.deepcopy(model)
    one = DDCMuon(model.parameters(), plan, ns_batched=False, ns_dtype=torch.float32, **HP)
    many = DDCMuon(twin.parameters(), plan.bind(twin), ns_batched=True, ns_dtype=torch.float32, **HP)
    _steps(model, inputs, one, 3)
    _steps(twin, inputs, many, 3)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
