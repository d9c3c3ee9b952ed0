"""Plans as data (JSON round trip, mismatch errors), generators, and sympy-checked proofs."""
import copy
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gaugec
from gaugec.oracle import generic_init_
from gaugec import zoo
from gaugec.plan import PlanMismatchError
from gaugec.prove import Proof
from gaugec.prove.lemmas import LEMMAS, check_lemma, lemma, run_lemma


def test_tangent_basis_shape_rank_and_dim(llama_plan):
    model, _, plan = llama_plan
    B = plan.tangent_basis()
    n = sum(p.numel() for p in model.parameters())
    assert B.shape == (sum(g.dim for g in plan.gauges), n)
    assert int(torch.linalg.matrix_rank(B)) == plan.dim == 113


def test_generators_are_derivatives_of_the_action(llama_plan):
    """ξ = d/dt exp(tX)·θ: compare with a finite difference of the action for one generator per gauge."""
    model, inputs, plan = llama_plan
    m = copy.deepcopy(model).double()
    generic_init_(m, seed=1)        # gains away from 1, so the rotation's conjugation by them is exercised
    bound = gaugec.GaugePlan(m, plan.gauges, loss=plan.loss, graph=plan.graph, example_inputs=inputs)
    theta0 = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    B = bound.tangent_basis()
    row = 0
    for g in bound.gauges:
        t = 1e-6
        if g.kind == "mult":
            b, X = next(iter(g.algebra_basis()))
            mats = [torch.eye(m_, dtype=torch.float64) for _, m_ in g.blocks]
            mats[b] = torch.linalg.matrix_exp(t * X)
            elem = ("mult", mats)
        else:
            v = torch.zeros(g.dim, dtype=torch.float64)
            v[0] = t
            elem = ("add", v)
        bound.act([elem], gauges=[g])
        theta1 = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
        fd = (theta1 - theta0) / t
        assert torch.allclose(fd, B[row], atol=1e-4 * max(1.0, float(B[row].abs().max()))), g.name
        with torch.no_grad():
            for p, v in zip(m.parameters(), torch.split(theta0, [p.numel() for p in m.parameters()])):
                p.copy_(v.reshape(p.shape))
        row += g.dim


def test_json_round_trip(llama_plan):
    model, inputs, plan = llama_plan
    text = plan.to_json()
    again = gaugec.GaugePlan.from_json(text, model, example_inputs=inputs)
    assert [g.name for g in again.gauges] == [g.name for g in plan.gauges]
    assert [g.group for g in again.gauges] == [g.group for g in plan.gauges]
    assert torch.allclose(again.tangent_basis(), plan.tangent_basis())
    assert all(g.proof.check() for g in again.gauges)
    assert json.loads(again.to_json()) == json.loads(text)


def test_plan_mismatch_and_corruption_are_clear_errors(llama_plan):
    model, _, plan = llama_plan
    other, _ = zoo.llama(d_ff=16)
    with pytest.raises(PlanMismatchError, match="mlp"):
        gaugec.GaugePlan.from_json(plan.to_json(), other)
    with pytest.raises(PlanMismatchError, match="not in the model"):
        gaugec.GaugePlan.from_json(plan.to_json(), nn.Linear(2, 2))
    with pytest.raises(PlanMismatchError, match="corrupted"):
        gaugec.GaugePlan.from_json(plan.to_json()[:-40], model)
    data = json.loads(plan.to_json())
    del data["gauges"][0]["legs"][0]["param"]
    with pytest.raises(PlanMismatchError, match="corrupted"):
        gaugec.GaugePlan.from_json(json.dumps(data), model)


def test_acting_with_the_wrong_element_is_an_error(llama_plan):
    model, _, plan = llama_plan
    with pytest.raises(PlanMismatchError):
        plan.act(plan.random_element()[:-1])


def test_every_registered_lemma_holds_under_sympy():
    for lid, lem in LEMMAS.items():
        assert run_lemma(lem), lid


def test_a_false_lemma_fails_and_fails_the_proof():
    import sympy as sp

    @lemma("test_false_relu_negative", "relu(c x) = c relu(x) for c < 0 (false)")
    def _false():
        x = sp.Symbol("x", positive=True)
        c = sp.Symbol("c", negative=True)
        return [sp.Max(0, c * x) - c * sp.Max(0, x)]

    try:
        assert check_lemma("test_false_relu_negative", use_cache=False) is False
        proof = Proof([("relu_pos_homogeneous", "n1"), ("test_false_relu_negative", "n2")])
        assert proof.check() is False
        assert "test_false_relu_negative" in proof.status
    finally:
        del LEMMAS["test_false_relu_negative"]


def test_the_norm_step_of_the_rotation_lemmas_fails_for_a_shear():
    """rmsnorm_rotation is proved in steps (R keeps |v|^2; then one scalar divisor): the first step must fail for a
    map that is not orthogonal, through every route of the checker (expand, cancel, simplify)."""
    import sympy as sp

    @lemma("test_false_rms_shear", "|S x|^2 = |x|^2 for a shear S (false)")
    def _false():
        s = sp.Symbol("s", real=True)
        x = sp.Matrix(sp.symbols("x0:2", real=True))
        S = sp.Matrix([[1, s], [0, 1]])
        return [((S * x).T * (S * x))[0] - (x.T * x)[0]]

    try:
        assert check_lemma("test_false_rms_shear", use_cache=False) is False
    finally:
        del LEMMAS["test_false_rms_shear"]


def test_unknown_lemma_in_a_certificate_fails():
    proof = Proof([("no_such_lemma", "n1")])
    assert proof.check() is False


def test_lemma_cache_is_keyed_by_content(monkeypatch, tmp_path):
    from gaugec.prove import lemmas as lemma_mod

    monkeypatch.setenv("GAUGEC_CACHE", str(tmp_path))
    lemma_mod.clear_cache()
    before = lemma_mod.STATS["sympy_runs"]
    assert check_lemma("softmax_shift")
    assert check_lemma("softmax_shift")
    assert lemma_mod.STATS["sympy_runs"] == before + 1          # second call: cache hit
    assert (tmp_path / "lemmas.json").exists()
    lemma_mod.clear_cache()                                       # memory cleared: the disk cache answers
    lemma_mod._disk_loaded = False
    assert check_lemma("softmax_shift")
    assert lemma_mod.STATS["sympy_runs"] == before + 1


def test_certificates_name_lemmas_and_nodes(llama_plan):
    _, _, plan = llama_plan
    qk = next(g for g in plan.gauges if g.family == "attention_qk_rope")
    assert {"rope_commutant", "bilinear_contract", "linear_writer"} <= set(qk.proof.lemmas)
    nodes = {n for _, n in qk.proof.steps}
    assert any("scaled_dot_product_attention" in n for n in nodes)
    gain = next(g for g in plan.gauges if g.family == "norm_gain")
    assert "norm_gain" in gain.proof.lemmas


# -- plans loaded from JSON are verified against the model they bind ------------------------------------------------

def test_a_false_plan_from_json_is_refused_and_a_true_one_loads():
    relu, inputs = zoo.relu_mlp()
    text = gaugec.compile(relu, inputs).to_json()
    torch.manual_seed(0)      # the same shapes, GELU where the plan saw ReLU
    gelu = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 5), nn.LeakyReLU(0.1), nn.Linear(5, 3))
    with pytest.raises(PlanMismatchError, match="another graph"):
        gaugec.GaugePlan.from_json(text, gelu, inputs)
    with pytest.raises(PlanMismatchError, match="example_inputs"):
        gaugec.GaugePlan.from_json(text, gelu)
    assert len(gaugec.GaugePlan.from_json(text, gelu, inputs, trust=True).gauges) == 3   # the documented escape
    loaded = gaugec.GaugePlan.from_json(text, relu, inputs)
    assert [g.proof.status for g in loaded.gauges] == ["proved"] * 3
    # the same graph, a tampered gauge: row i of layer 0 paired with the column of another unit
    data = json.loads(text)
    leg = next(lg for lg in data["gauges"][0]["legs"] if lg["role"] == "in")
    leg["entries"] = leg["entries"][1:] + leg["entries"][:1]
    with pytest.raises(PlanMismatchError, match="changes the model's output"):
        gaugec.GaugePlan.from_json(json.dumps(data), relu, inputs)
    data = json.loads(text)
    data["gauges"][0]["proof"]["steps"] = [["no_such_lemma", data["gauges"][0]["proof"]["steps"][0][1]]]
    with pytest.raises(PlanMismatchError, match="proof FAILED"):
        gaugec.GaugePlan.from_json(json.dumps(data), relu, inputs)


# -- which output f is ---------------------------------------------------------------------------------------------

class _AuxLogits(nn.Module):
    """(aux, logits): an auxiliary scalar computed from the hidden layer, returned beside the logits."""

    def __init__(self, as_dict=False):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        self.as_dict = as_dict

    def forward(self, x):
        h = self.a(x)
        aux, out = h.pow(2).mean(), self.b(h)
        return {"aux": aux, "scores": out} if self.as_dict else (aux, out)


def _outputs_unchanged(plan, model, inputs) -> float:
    """Worst relative change of every floating output under a large element of each gauge (float64)."""
    from torch.utils import _pytree as pytree

    m = copy.deepcopy(model).double()
    x = tuple(t.double() for t in inputs)
    outs0 = [o.detach() for o in pytree.tree_leaves(m(*x))]
    plan.bind(m).act(plan.random_element(torch.Generator().manual_seed(2), spread=10.0))
    outs1 = [o.detach() for o in pytree.tree_leaves(m(*x))]
    return max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(outs0, outs1))


@pytest.mark.parametrize("as_dict", [False, True])
def test_every_float_output_is_f_unless_output_says_which(as_dict):
    torch.manual_seed(0)
    model = _AuxLogits(as_dict)
    inputs = (torch.randn(5, 4),)
    plan = gaugec.compile(model, inputs)
    # the GL(6) between a and b changes aux; a translation of the scores is not shift-invariant for aux's sake
    assert not any(g.family in ("linear_linear", "logit_shift") for g in plan.gauges)
    if plan.gauges:
        assert _outputs_unchanged(plan, model, inputs) <= 1e-10
    chosen = gaugec.compile(model, inputs, output="scores" if as_dict else 1)
    # only the scores are f now: the aux branch constrains nothing (the bias translation of a, absorbed by b, too)
    assert {g.family for g in chosen.gauges} == {"linear_linear", "logit_shift", "bias_translation"}
    by_callable = gaugec.compile(model, inputs, output=(lambda o: o["scores"]) if as_dict else (lambda o: o[1]))
    assert [g.name for g in by_callable.gauges] == [g.name for g in chosen.gauges]
    with pytest.raises(gaugec.CaptureError, match="output="):
        gaugec.compile(model, inputs, output=lambda o: o[1] * 2 if not as_dict else o["scores"] * 2)
    again = gaugec.GaugePlan.from_json(chosen.to_json(), model, inputs)     # f's leaves travel with the plan
    assert again.f_leaves == chosen.f_leaves


def test_integer_inputs_cast_inside_the_model_compile_and_verify():
    class OneHot(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(5, 6), nn.Linear(6, 3)

        def forward(self, i):
            return self.b(torch.relu(self.a(F.one_hot(i, 5).float())))

    torch.manual_seed(0)
    model, inputs = OneHot(), (torch.arange(5).repeat(3),)
    plan = gaugec.compile(model, inputs)
    assert {g.family for g in plan.gauges} == {"positive_rescale", "logit_shift"}
    assert all(g.proof.status == "proved" and g.numeric_residual <= 1e-12 for g in plan.gauges)
    assert gaugec.verify(model, inputs, plan).sound


def test_the_numeric_check_sees_a_conjugation_by_the_wrong_gain_even_at_unit_gains():
    """At initialisation every gain is 1, where D R D⁻¹ = R for any D: the check moves the conjugating gains off 1
    and tries again, so a reader conjugated by the wrong norm's gain is refused."""
    from gaugec.prove.numeric import numeric_check

    model, inputs = zoo.llama(eps=1e-5)
    plan = gaugec.compile(model, inputs)
    (rot,) = [g for g in plan.gauges if g.family == "residual_rotation"]
    assert rot.numeric_residual <= 1e-12
    leg = next(lg for lg in rot.legs if lg.param == "layers.0.self_attn.q_proj.weight")
    assert leg.conj == "layers.0.input_layernorm.weight"
    leg.conj = "layers.0.post_attention_layernorm.weight"      # wrong, and invisible while both gains are 1
    numeric_check(plan)
    assert rot.numeric_residual > 1e-3


@pytest.mark.parametrize("name", ["llama", "moe_mlp"])
def test_the_json_plan_keeps_conjugated_and_sliced_legs(name):
    """A rotation's readers name their gain (Leg.conj), an expert's legs their slice (Leg.part): both survive the
    lock file, and the reloaded plan has the same generators."""
    from gaugec.plan.plan import GaugePlan

    model, inputs = zoo.ZOO[name]()
    plan = gaugec.compile(model, inputs)
    again = GaugePlan.from_json(plan.to_json(), model, inputs)
    legs = lambda p: [(lg.param, lg.conj, lg.part) for g in p.gauges for lg in g.legs]   # noqa: E731
    assert legs(again) == legs(plan) and any(c or part for _, c, part in legs(plan))
    assert torch.equal(again.tangent_basis(), plan.tangent_basis())


def test_acting_with_shared_graph_reads_equals_acting_gauge_by_gauge():
    """plan.act reads every absorbing site from one base run of the graph (AbsorbReads), recomputing only what the
    gauges before moved; it must give what each gauge computed on its own from a full run gives."""
    import copy

    from gaugec.optim import tasks

    model, inputs = tasks.float64_zoo("gpt2")
    plan = gaugec.compile(model, inputs)
    assert any(lg.role == "absorb" for g in plan.gauges for lg in g.legs)
    element = plan.random_element(torch.Generator().manual_seed(3))
    shared, alone = copy.deepcopy(model), copy.deepcopy(model)
    plan.bind(shared).act(element)
    bound = plan.bind(alone)
    params = bound._params()
    with torch.no_grad():
        for g, (kind, val) in zip(plan.gauges, element):
            bound.act_on(g, kind, val, params)             # no shared reads: a full run per gauge
    for (name, a), (_, b) in zip(shared.named_parameters(), alone.named_parameters()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12 * float(b.abs().max())), name
