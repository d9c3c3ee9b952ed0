"""DDCAdam on the weights people really have: zero-initialised output projections, LoRA, rank-deficient
linear-linear blocks, dead units, zero gains, frozen and NaN parameters (docs/ddc.md, "Stable and unstable orbits").

The construction's statement: a block whose orbit is unstable (a zero or rank-deficient leg) is held where it is,
by the first canonicalisation and by every per-step sweep, until its orbit is stable; every other block is on the
Kempf–Ness section. So runs from θ and g·θ coincide for every g that is the identity on the blocks held at θ, and
no parameter is ever moved towards zero or infinity by the canonicalisation."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gaugec
from gaugec import zoo
from gaugec.optim import DDCAdam, tasks
from gaugec.functional import Float64Mode, float64_twin, model_f
from gaugec.optim.section import CanonicalisationError

STEPS, LR, WD = 30, 1e-2, 0.1


def _double(model, inputs):
    return float64_twin(model, inputs, copy_model=False)


def _ddc(model, plan, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # the held-block warning is tested on its own
        return DDCAdam(model.parameters(), plan, lr=LR, weight_decay=WD, **kw)


def _batches(model, inputs, plan, n=STEPS, seed=5):
    out = model_f(model, inputs, plan.loss, plan.f_leaves)
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, out.shape[-1], out.shape[:-1], generator=gen) for _ in range(n)]


def _train(model, inputs, plan, batches, element=None, optimizer="ddc"):
    """Train a copy of ``model`` moved by ``element``; the log-probabilities after every step, the model, opt."""
    def make(m, bound):
        return _ddc(m, bound) if optimizer == "ddc" else torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=WD)

    return tasks.run_from(model, inputs, plan, batches, element, make)


_gap = tasks.worst_step_gap


def _element_off(plan, held: dict, seed=1):
    """A large random element that is the identity on the held blocks."""
    el = plan.random_element(torch.Generator().manual_seed(seed), spread=100.0, gl_spread=3.0)
    out = []
    for g, (kind, val) in zip(plan.gauges, el):
        if kind == "mult" and g.name in held:
            val = [torch.eye(m.shape[0], dtype=m.dtype) if b in held[g.name] else m for b, m in enumerate(val)]
        out.append((kind, val))
    return out


def _blocks_of(gauge, param, indices) -> list[int]:
    """The gauge's blocks that move entries ``indices`` of ``param`` along its leg's axis."""
    leg = next(lg for lg in gauge.legs if lg.param == param)
    return sorted({int(leg.entries[i, 0]) for i in indices})


def _construct_checked(model, inputs, plan):
    """Build DDCAdam: f unchanged, no live parameter shrunk below 1e-3 of its norm or grown 1e3-fold."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with Float64Mode():     # Hugging Face norms cast to float32 even in a float64 model: keep them in float64
        f0 = model_f(model, inputs, plan.loss, plan.f_leaves).detach()
    opt = _ddc(model, plan)
    with torch.no_grad(), Float64Mode():
        f1 = model_f(model, inputs, plan.loss, plan.f_leaves)
    assert float((f1 - f0).abs().max() / f0.abs().max()) <= 1e-12
    for n, p in model.named_parameters():
        b = float(before[n].norm())
        assert bool(torch.isfinite(p).all()), n
        if b > 0 and not any(s in n for s in ("bias",)):
            assert 1e-3 <= float(p.detach().norm()) / b <= 1e3, (n, b, float(p.detach().norm()))
    return opt, before


def _equivariant_off_held(model, inputs, plan, held, adamw_contrast=True):
    batches = _batches(model, inputs, plan)
    g = _element_off(plan, held)
    ref, _, _ = _train(model, inputs, plan, batches)
    moved, _, _ = _train(model, inputs, plan, batches, g)
    assert _gap(ref, moved) <= 1e-9
    if adamw_contrast:
        ref_w, _, _ = _train(model, inputs, plan, batches, optimizer="adamw")
        moved_w, _, _ = _train(model, inputs, plan, batches, g, optimizer="adamw")
        assert _gap(ref_w, moved_w) >= 1e-3


# -- zero-initialised output projections ----------------------------------------------------------------------------

def test_zero_init_output_projections_are_held_not_collapsed_and_training_is_equivariant_off_them():
    model, inputs = _double(*zoo.llama_gqa(n_layers=2, eps=1e-6))
    tasks.zero_init_outputs(model)
    plan = gaugec.compile(model, inputs)
    other = copy.deepcopy(model)
    with pytest.warns(UserWarning, match="unstable orbits"):
        DDCAdam(other.parameters(), plan.bind(other))
    m = copy.deepcopy(model)
    opt, before = _construct_checked(m, inputs, plan.bind(m))
    held = opt.canonical_report["held"]
    vo = [g for g in plan.gauges if g.family == "attention_vo"]
    glu = [g for g in plan.gauges if g.family == "glu_rescale"]
    assert vo and glu
    for g in vo + glu:        # both zeroed: every block of V/O and of the SwiGLU rescale is held
        assert held.get(g.name) == list(range(len(g.blocks))), g.name
    for layer_before, layer in ((before[f"layers.{i}.self_attn.v_proj.weight"], m.layers[i].self_attn.v_proj.weight)
                                for i in range(2)):
        assert float(layer.norm()) >= 0.5 * float(layer_before.norm())
    _equivariant_off_held(model, inputs, plan, held)
    # one step later the zeros have moved: every block is stable and balanced
    _, trained, opt = _train(model, inputs, plan, _batches(model, inputs, plan, n=3))
    assert opt.held_blocks() == {}


@pytest.mark.hf
def test_zero_init_hf_llama_construction_keeps_f_and_every_live_weight():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                   use_cache=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).double()
    tasks.zero_init_outputs(model)
    inputs = (torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(0)),)
    plan = gaugec.compile(model, inputs)
    opt, _ = _construct_checked(model, inputs, plan)
    assert any(g.startswith("attention_vo") for g in opt.canonical_report["held"])
    for i in range(3):
        opt.zero_grad()
        logits = model(*inputs).logits
        F.cross_entropy(logits.reshape(-1, 32), inputs[0].reshape(-1)).backward()
        opt.step()
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert opt.held_blocks() == {}


def test_zero_init_char_llama_trains_within_a_quarter_of_adamw():
    hp = dict(lr=3e-3, weight_decay=0.1)

    def model():
        return tasks.zero_init_outputs(tasks.char_llama())

    adamw = tasks.train_char_lm(tasks.adamw_factory(**hp), steps=200, model=model())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ddc = tasks.train_char_lm(tasks.ddcadam_factory(**hp), steps=200, model=model())
    assert ddc.final_val <= 1.25 * adamw.final_val, (ddc.final_val, adamw.final_val)
    assert ddc.final_val < 0.8 * ddc.val[0]


# -- LoRA ----------------------------------------------------------------------------------------------------------

def test_lora_frozen_base_is_never_written_and_the_adapter_learns():
    hp = dict(lr=3e-3, weight_decay=0.0)
    targets = ("q_proj", "v_proj", "up_proj", "down_proj")

    def model():
        return tasks.add_lora(tasks.char_llama(), targets=targets, r=4)

    frozen = {}

    def ddc_factory(m, inputs):
        frozen.update({n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad})
        plan = gaugec.compile(m, inputs, loss="cross_entropy")
        with pytest.warns(UserWarning) as record:
            opt = DDCAdam(m.parameters(), plan, **hp)
        messages = [str(w.message) for w in record]
        assert sum("frozen" in s for s in messages) == 1          # one warning names every gauge left out
        assert any("unstable orbits" in s and "linear_linear" in s for s in messages)   # B = 0: held
        frozen["model"] = m
        return opt

    m_ddc = model()
    adamw = tasks.train_char_lm(tasks.adamw_factory(**hp), steps=50, model=model(), eval_every=50)
    ddc = tasks.train_char_lm(ddc_factory, steps=50, model=m_ddc, eval_every=50)
    m = frozen.pop("model")
    assert frozen
    for n, p in m.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    start = tasks.train_char_lm(tasks.adamw_factory(lr=0.0), steps=1, model=model(), eval_every=1).val[0]
    learned_adamw, learned_ddc = start - adamw.final_val, start - ddc.final_val
    assert learned_adamw > 0
    assert learned_ddc >= 0.5 * learned_adamw, (start, adamw.final_val, ddc.final_val)


# -- rank-deficient linear-linear blocks, dead units, zero gains ----------------------------------------------------

@pytest.mark.parametrize("dims,loss", [((5, 6, 3), "cross_entropy"), ((6, 6, 6), "cross_entropy"),
                                       ((3, 3, 3), "cross_entropy"), ((3, 3, 3), None)])
def test_linear_linear_blocks_construct_and_are_equivariant_off_the_held_ones(dims, loss):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(dims[0], dims[1], bias=False), nn.Linear(dims[1], dims[2], bias=False)).double()
    inputs = (torch.randn(8, dims[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1)),)
    plan = gaugec.compile(model, inputs, loss=loss)
    gl = [g for g in plan.gauges if g.family == "linear_linear"]
    assert gl
    m = copy.deepcopy(model)
    opt, before = _construct_checked(m, inputs, plan.bind(m))
    held = opt.canonical_report["held"]
    # under cross entropy the head is centred (rank dims[2] - 1): the GL block's orbit is unstable unless both
    # legs have full rank dims[1]; the raw-output 3→3→3 block is stable and balanced
    unstable = loss == "cross_entropy"
    assert (gl[0].name in held) == unstable
    if unstable:
        assert torch.equal(m[0].weight, before["0.weight"])      # held: the first leg is exactly where it was
    else:
        assert not torch.equal(m[0].weight, before["0.weight"])
    if loss == "cross_entropy":
        _equivariant_off_held(model, inputs, plan, held, adamw_contrast=False)
    else:
        _equivariant_raw(model, inputs, plan)


def _equivariant_raw(model, inputs, plan):
    """Raw-output model trained on an MSE loss from θ and g·θ (g a large element of every gauge)."""
    target = torch.randn(model(*inputs).shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    g = plan.random_element(torch.Generator().manual_seed(1), spread=100.0, gl_spread=3.0)
    outs = []
    for el, opt_kind in ((None, "ddc"), (g, "ddc"), (None, "adamw"), (g, "adamw")):
        m = copy.deepcopy(model)
        bound = plan.bind(m)
        if el is not None:
            bound.act(el)
        opt = _ddc(m, bound) if opt_kind == "ddc" else torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=WD)
        trace = []
        for _ in range(STEPS):
            opt.zero_grad()
            F.mse_loss(m(*inputs), target).backward()
            opt.step()
            trace.append(m(*inputs).detach())
        outs.append(torch.stack(trace))
    assert _gap(outs[0], outs[1]) <= 1e-9
    assert _gap(outs[2], outs[3]) >= 1e-3


def test_dead_relu_units_and_a_zero_output_column_do_not_collapse():
    model, inputs = _double(*zoo.relu_mlp())
    with torch.no_grad():
        model[0].bias[1] = -1e3          # unit 1 of the first layer is dead on every input (its legs are live)
        model[2].weight[:, 3] = 0.0      # unit 3's outgoing column is zero: its rescale orbit is unstable
    plan = gaugec.compile(model, inputs)
    m = copy.deepcopy(model)
    opt, before = _construct_checked(m, inputs, plan.bind(m))
    held = opt.canonical_report["held"]
    first = next(g for g in plan.gauges if g.family == "positive_rescale" and "0.weight" in g.params)
    assert held == {first.name: _blocks_of(first, "0.weight", [3])}
    assert torch.equal(m[0].weight[3], before["0.weight"][3])            # held: row 3 is where it was
    assert float(m[0].weight[1].norm()) >= 1e-3 * float(before["0.weight"][1].norm())
    _equivariant_off_held(model, inputs, plan, held)


def test_zero_norm_gains_are_held_and_their_readers_kept():
    model, inputs = _double(*zoo.llama(eps=1e-6))
    with torch.no_grad():
        model.layers[0].input_layernorm.weight[[0, 5]] = 0.0
    plan = gaugec.compile(model, inputs)
    m = copy.deepcopy(model)
    opt, before = _construct_checked(m, inputs, plan.bind(m))
    gain = next(g for g in plan.gauges if g.name == "norm_gain@layers.0.input_layernorm")
    assert opt.canonical_report["held"][gain.name] == _blocks_of(gain, "layers.0.input_layernorm.weight", [0, 5])
    for proj in ("q_proj", "k_proj", "v_proj"):                     # the columns read through the zero gains live
        w = getattr(m.layers[0].self_attn, proj).weight
        assert float(w[:, 0].norm()) >= 1e-3 * float(before[f"layers.0.self_attn.{proj}.weight"][:, 0].norm())
    _equivariant_off_held(model, inputs, plan, opt.canonical_report["held"])


# -- bad state: NaN, meta, a failed canonicalisation --------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_nan_parameter_or_a_failing_section_raises_and_changes_nothing(dtype, monkeypatch):
    model, inputs = zoo.llama_gqa(n_layers=1, eps=1e-6)
    model.to(dtype)
    plan = gaugec.compile(model, inputs)
    with torch.no_grad():
        model.layers[0].mlp.up_proj.weight[2, 3] = float("nan")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="layers.0.mlp.up_proj.weight holds NaN"):
        DDCAdam(model.parameters(), plan)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) or n == "layers.0.mlp.up_proj.weight"
    assert torch.isnan(model.layers[0].mlp.up_proj.weight[2, 3])
    with torch.no_grad():
        model.layers[0].mlp.up_proj.weight[2, 3] = 0.5
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    from gaugec.optim import section as executor

    calls = {"n": 0}
    real = executor._solve

    def failing(kind, P, Q):       # the third batched solve returns NaN: the sweeps are half done
        calls["n"] += 1
        A, Ad = real(kind, P, Q)
        return (A * float("nan"), Ad) if calls["n"] == 3 else (A, Ad)

    monkeypatch.setattr(executor, "_solve", failing)
    with pytest.raises(CanonicalisationError, match="not finite"):
        DDCAdam(model.parameters(), plan)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_a_meta_parameter_is_a_clear_error():
    with torch.device("meta"):
        model, inputs = zoo.llama(eps=1e-6)
    model_real, inputs = zoo.llama(eps=1e-6)
    plan = gaugec.compile(model_real, inputs)
    with pytest.raises(CanonicalisationError, match="meta device"):
        DDCAdam(model.parameters(), plan.bind(model))


def test_a_one_sided_norm_input_scale_is_held_with_a_reason():
    """Linear → LayerNorm(eps 0) → Linear: the writer's common scale passes the norm, but nothing moves inversely,
    so ‖g·θ‖ → 0 along the orbit: no minimum-norm point. The frame holds the block (bit for bit) and says why."""
    model, inputs = zoo.ln_mlp()
    model, inputs = _double(model, inputs)
    plan = gaugec.compile(model, inputs, loss=None)
    assert [g.group for g in plan.gauges if g.family == "norm_input_scale"] == ["R+ (c I_6)"]
    writer = model[0].weight.detach().clone()
    with pytest.warns(UserWarning, match="norm_input_scale@0: the group moves one side only"):
        opt = DDCAdam(model.parameters(), plan, lr=1e-2)
    assert opt.held_blocks()["norm_input_scale@0"] == [0]
    for _ in range(3):
        opt.zero_grad()
        model(*inputs).square().sum().backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(model[0].weight, writer)      # trained, not frozen: only the scale is held
