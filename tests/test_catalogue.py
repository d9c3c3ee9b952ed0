"""One tiny model per gauge family and per caveat: exact orbit dimensions found, and numeric invariance."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gaugec
from gaugec import zoo
from gaugec.functional import float64_twin, model_f

from .conftest import family_dims

# the residual stream (d 8): O(8) = 28 rotations, the readers conjugated by their norm gains, at any eps
LLAMA_BASE = {"norm_gain": 24, "attention_qk_rope": 8, "attention_vo": 32, "glu_rescale": 12, "logit_shift": 8,
              "norm_input_scale": 1, "residual_rotation": 28}

CASES = [
    # (id, factory, loss, expected family -> total dim)
    ("llama", lambda: zoo.llama(), "cross_entropy", LLAMA_BASE),
    ("llama-no-rope", lambda: zoo.llama(rope=False), "cross_entropy",
     {**LLAMA_BASE, "attention_qk_rope": 0, "attention_qk": 32}),
    # partial rotary (half of d_head 4): one rotary pair (R+ x SO(2)) and a free GL(2) per head
    ("llama-partial-rotary", lambda: zoo.llama(partial_rotary=0.5), "cross_entropy",
     {**LLAMA_BASE, "attention_qk_rope": 4, "attention_qk": 8}),
    ("llama-interleaved-rope", lambda: zoo.llama(rope_style="interleaved"), "cross_entropy", LLAMA_BASE),
    ("llama-complex-rope", lambda: zoo.llama(rope_style="complex"), "cross_entropy", LLAMA_BASE),
    # tied embeddings kill the logit shift and the final norm's gain (its reader is the embedding), and the stream
    # rotation (the embedding would move by R as a writer and by D R D^-1 as the head); the stream scale survives,
    # the final norm's gain taking 1/c for the tied head
    ("llama-tied", lambda: zoo.llama(tie=True), "cross_entropy",
     {**LLAMA_BASE, "logit_shift": 0, "norm_gain": 16, "norm_input_scale": 1, "residual_rotation": 0}),
    # q/k/v biases move with their maps; with RoPE the key bias is no translation gauge
    ("llama-bias-rope", lambda: zoo.llama(bias=True), "cross_entropy", LLAMA_BASE),
    ("llama-bias-no-rope", lambda: zoo.llama(bias=True, rope=False), "cross_entropy",
     {**LLAMA_BASE, "attention_qk_rope": 0, "attention_qk": 32, "key_bias": 8}),
    ("llama-gemma-gains", lambda: zoo.llama(offset_gain=True), "cross_entropy", LLAMA_BASE),
    # QK-norm (RMSNorm over d_head before RoPE) stops the projection maps; without RoPE the q-norm gain pairs with
    # the inverse k-norm gain (a diagonal Q/K map, d_head = 4)
    # at eps 0 each query and key head's projection scale passes its norm (4), beside the stream's scale (1)
    # with RoPE, each rotary pair of the q-norm gain scales against the same pair of the k-norm gain (a tied scalar:
    # c I commutes with the pair's rotation): d_head / 2 = 2
    ("llama-qk-norm", lambda: zoo.llama(qk_norm=True), "cross_entropy",
     {**LLAMA_BASE, "attention_qk_rope": 2, "norm_input_scale": 5}),
    ("llama-qk-norm-no-rope", lambda: zoo.llama(qk_norm=True, rope=False), "cross_entropy",
     {**LLAMA_BASE, "attention_qk_rope": 0, "attention_qk": 4, "norm_input_scale": 5}),
    ("llama-qk-norm-eps", lambda: zoo.llama(qk_norm=True, eps=1e-6), "cross_entropy",
     {**LLAMA_BASE, "attention_qk_rope": 2, "norm_input_scale": 0}),
    ("llama-2-layers", lambda: zoo.llama(n_layers=2), "cross_entropy",
     {"norm_gain": 40, "attention_qk_rope": 16, "attention_vo": 64, "glu_rescale": 24, "logit_shift": 8,
      "norm_input_scale": 1, "residual_rotation": 28}),
    ("llama-mse", lambda: zoo.llama(), "mse", {**LLAMA_BASE, "logit_shift": 0}),
    # GQA: one map per KV head (2 KV heads of d_head 4 under 4 query heads)
    ("llama-gqa", lambda: zoo.llama_gqa(), "cross_entropy",
     {"norm_gain": 48, "attention_qk_rope": 8, "attention_vo": 32, "glu_rescale": 12, "logit_shift": 16,
      "norm_input_scale": 1, "residual_rotation": 120}),
    # the LayerNorm stream (d 8) rotates by O(7), fixing the ones vector; the tied head (below) refuses it
    # each reader with a bias of a layer norm (c_attn 24, c_fc 32) moves its rows along the inverse gain; the head
    # has no bias to absorb the constant, so its kernel is the logit shift's. The token table's translation is taken
    # by the position table (8 of the bias translations); the bias-free head reads ln_f through its shear (8)
    ("gpt2-untied", lambda: zoo.gpt2(tie=False), "cross_entropy",
     {"norm_gain": 24, "attention_qk": 32, "attention_vo": 32, "norm_input_shift": 66, "bias_translation": 24,
      "key_bias": 8, "value_bias": 8, "logit_shift": 8, "residual_rotation": 21, "layernorm_kernel": 56,
      "layernorm_shear": 8}),
    # the fused QKV bias is split into query / key / value translations: the key and value parts survive
    # (the token translation moves the tied head's logits by <h, t> 1, which the loss absorbs: it survives the tie)
    ("gpt2-tied", lambda: zoo.gpt2(), "cross_entropy",
     {"norm_gain": 16, "attention_qk": 32, "attention_vo": 32, "norm_input_shift": 50, "bias_translation": 24,
      "key_bias": 8, "value_bias": 8, "layernorm_kernel": 56}),
    ("relu-mlp", zoo.relu_mlp, "cross_entropy", {"positive_rescale": 11, "logit_shift": 6}),
    # stacked experts: each expert's rescale acts on its slice W1[e], b1[e], W2[e]; the router's softmax absorbs a
    # row shift, and so does the loss each expert's head slice W2[e] (35 = the oracle's nullity)
    ("moe-mlp", zoo.moe_mlp, "cross_entropy", {"positive_rescale": 15, "logit_shift": 20}),
    ("gelu-mlp", zoo.gelu_mlp, "cross_entropy", {"logit_shift": 7}),
    # conv1's bias translation passes the batch norm (eval) as (γ / s) t and its bias takes it; conv1's per-channel
    # scale is undone by the batch norm's gain, its bias taking the running mean's share
    ("convnet-batchnorm", zoo.convnet, "cross_entropy", {"norm_gain": 4, "positive_rescale": 6, "logit_shift": 7,
                                                         "bias_translation": 4, "batchnorm_input_scale": 4}),
    ("layernorm-mlp", zoo.ln_mlp, None, {"norm_gain": 6, "norm_input_shift": 5, "bias_translation": 6,
                                         "norm_input_scale": 1, "residual_rotation": 10, "layernorm_kernel": 3}),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_family_dims_and_invariance(case):
    _, factory, loss, expected = case
    model, inputs = factory()
    plan = gaugec.compile(model, inputs, loss=loss)
    assert not plan.rejected, [(g.name, g.proof.status) for g in plan.rejected]
    dims = family_dims(plan)
    assert dims == {k: v for k, v in expected.items() if v}
    for g in plan.gauges:
        assert g.proof.symbolic_ok, g.name
        assert g.numeric_residual is not None and g.numeric_residual <= 1e-10, (g.name, g.numeric_residual)


@torch.no_grad()
def _check_whole_plan_invariance(model, inputs, plan, seed=3):
    m64, inputs = float64_twin(model, inputs)
    bound = gaugec.GaugePlan(m64, plan.gauges, loss=plan.loss, graph=plan.graph, example_inputs=inputs)
    f0 = model_f(m64, inputs, plan.loss)
    g = bound.random_element(torch.Generator().manual_seed(seed), spread=10.0)
    before = torch.cat([p.detach().reshape(-1) for p in m64.parameters()])
    bound.act(g)
    after = torch.cat([p.detach().reshape(-1) for p in m64.parameters()])
    f1 = model_f(m64, inputs, plan.loss)
    assert (after - before).abs().max() > 0.1, "the element did not move the parameters"
    return float((f1 - f0).abs().max() / f0.abs().max())


@pytest.mark.parametrize("name", ["llama", "llama_gqa", "gpt2", "relu_mlp", "convnet"])
def test_all_gauges_at_once_leave_f_unchanged(name):
    model, inputs = zoo.load(name)
    plan = gaugec.compile(model, inputs)
    assert _check_whole_plan_invariance(model, inputs, plan) <= 1e-10


def test_plan_act_moves_the_bound_model_in_place(llama_plan):
    model, inputs, plan = llama_plan
    m = copy.deepcopy(model)
    bound = gaugec.GaugePlan(m, plan.gauges, loss=plan.loss, graph=plan.graph, example_inputs=inputs)
    w0 = m.layers[0].self_attn.v_proj.weight.detach().clone()
    bound.act(bound.random_element(torch.Generator().manual_seed(0)))
    assert not torch.allclose(w0, m.layers[0].self_attn.v_proj.weight)


def test_gelu_and_silu_are_refused_with_a_reason():
    for act in (nn.GELU(), nn.SiLU()):
        model = nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 3))
        plan = gaugec.compile(model, (torch.randn(3, 4),), loss=None)
        assert "positive_rescale" not in family_dims(plan)
        assert any("not positively homogeneous" in r.reason for r in plan.refusals)


class GeGLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(4, 6, bias=False), nn.Linear(4, 6, bias=False), nn.Linear(6, 3)

    def forward(self, x):
        return self.down(F.gelu(self.gate(x)) * self.up(x))


def test_geglu_rescale_allows_sign():
    plan = gaugec.compile(GeGLU(), (torch.randn(5, 4),), loss=None)
    glu = [g for g in plan.gauges if g.family == "glu_rescale"]
    assert len(glu) == 1 and glu[0].dim == 6 and glu[0].group == "R*^6"
    assert "up.weight" in glu[0].params and "gate.weight" not in glu[0].params


class SoftCapHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        return 3.0 * torch.tanh(self.head(x) / 3.0)


def test_soft_cap_breaks_the_logit_shift():
    plain = gaugec.compile(nn.Linear(4, 5), (torch.randn(3, 4),))
    assert family_dims(plain) == {"logit_shift": 5}
    capped = gaugec.compile(SoftCapHead(), (torch.randn(3, 4),))
    assert "logit_shift" not in family_dims(capped)


def test_module_rmsnorm_and_layernorm_ops_give_gains():
    for norm in (nn.RMSNorm(6), nn.LayerNorm(6)):
        model = nn.Sequential(nn.Linear(4, 6), norm, nn.Linear(6, 3))
        plan = gaugec.compile(model, (torch.randn(3, 4),), loss=None)
        gains = [g for g in plan.gauges if g.family == "norm_gain"]
        assert sum(g.dim for g in gains) == 6


def test_rope_group_is_the_rotary_commutant(llama_plan):
    _, _, plan = llama_plan
    (qk,) = [g for g in plan.gauges if g.family == "attention_qk_rope"]
    assert qk.group == "(R+ x SO(2))^4"
    assert {"layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight"} <= set(qk.params)


def test_gqa_shares_one_map_per_kv_head():
    model, inputs = zoo.llama_gqa()
    plan = gaugec.compile(model, inputs)
    (vo,) = [g for g in plan.gauges if g.family == "attention_vo"]
    assert vo.group == "GL(4)^2"        # 2 KV heads, not 4 query heads
    o_leg = [lg for lg in vo.legs if lg.param.endswith("o_proj.weight")][0]
    # the 4 query heads' column blocks of o_proj point at 2 blocks, each shared by 2 heads
    blocks = o_leg.entries[:, 0].reshape(4, 4)[:, 0].tolist()
    assert blocks == [0, 0, 1, 1]


def test_loss_names_are_checked():
    with pytest.raises(ValueError, match="loss must be"):
        gaugec.compile(nn.Linear(2, 2), (torch.randn(1, 2),), loss="hinge")
