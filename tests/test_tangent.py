"""The orbit dimension from the plan's structure equals the dense rank of the tangent basis, and the tangent
operator equals the basis, on every zoo model and at the special weights where stabilisers appear."""
import pytest
import torch
from torch import nn

import gaugec
from gaugec import zoo
from gaugec.optim import tasks
from gaugec.plan import tangent
from gaugec.plan.tangent import orbit_dimension


def _agree(plan, expect_stabiliser: bool | None = None):
    """structural = dense = auto; the operator's matvec/rmatvec = Bᵀc / Bv on random vectors."""
    dense = orbit_dimension(plan, method="dense")
    assert orbit_dimension(plan, method="structural") == dense
    assert plan.dim == dense
    total = sum(g.dim for g in plan.gauges)
    if expect_stabiliser is not None:
        assert (dense < total) == expect_stabiliser, (dense, total)
    B = plan.tangent_basis()
    op = plan.tangent_operator()
    assert op.shape == tuple(B.shape)
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(B.shape[0], generator=gen, dtype=torch.float64)
    v = torch.randn(B.shape[1], generator=gen, dtype=torch.float64)
    assert torch.allclose(op.matvec(c), B.T @ c, rtol=1e-12, atol=1e-12 * float((B.T @ c).abs().max()))
    assert torch.allclose(op.rmatvec(v), B @ v, rtol=1e-12, atol=1e-12 * float((B @ v).abs().max()))
    return dense, total


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_structural_orbit_dimension_and_operator_match_the_dense_basis_on_every_zoo_model(name):
    model, inputs = zoo.load(name)
    _agree(gaugec.compile(model, inputs))


def test_the_layernorm_sandwich_counts_the_overlap_of_the_logit_shift_and_the_kernel_once():
    model, inputs = zoo.ln_mlp()
    dense, total = _agree(gaugec.compile(model, inputs))
    assert (dense, total) == (37, 38)     # t γ⁻ᵀ with t = 1 is the logit shift by γ⁻¹ (its bias compensated)


@pytest.mark.parametrize("dims,bias", [((3, 8, 2), True), ((5, 6, 3), False), ((6, 6, 6), False)])
def test_a_wide_linear_pair_has_the_stabiliser_of_its_ranks(dims, bias):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(dims[0], dims[1], bias=bias), nn.Linear(dims[1], dims[2], bias=bias)).double()
    inputs = (torch.randn(8, dims[0], dtype=torch.float64),)
    plan = gaugec.compile(model, inputs, loss=None)
    # GL(h) with the writer's rows [W | b] of rank r1 and the reader's columns of rank r2 fixes (h - r1)(h - r2)
    _agree(plan, expect_stabiliser=dims[1] > min(dims[0] + bias, dims[2]))


def test_zero_initialised_outputs_and_lora_adapters_keep_their_full_orbits():
    # one leg zero (o_proj, down_proj, LoRA's B) leaves the orbit unstable but not smaller: A X = 0 forces X = 0
    model, inputs = zoo.llama_gqa(n_layers=2, eps=1e-6)
    tasks.zero_init_outputs(model)
    _agree(gaugec.compile(model, inputs), expect_stabiliser=False)
    model, inputs = zoo.llama()
    tasks.add_lora(model, targets=("q_proj", "v_proj", "down_proj"), r=2)
    _agree(gaugec.compile(model, inputs), expect_stabiliser=False)


def test_blocks_whose_every_row_is_zero_are_fixed():
    model, inputs = zoo.relu_mlp()
    with torch.no_grad():               # unit 3 of the first layer: row, bias and outgoing column all zero
        model[0].weight[3] = 0.0
        model[0].bias[3] = 0.0
        model[2].weight[:, 3] = 0.0
    _agree(gaugec.compile(model, inputs), expect_stabiliser=True)
    model, inputs = zoo.llama(eps=1e-6)
    with torch.no_grad():               # gain entries 0 and 5, and every column that reads them, zero
        model.layers[0].input_layernorm.weight[[0, 5]] = 0.0
        for proj in ("q_proj", "k_proj", "v_proj"):
            getattr(model.layers[0].self_attn, proj).weight[:, [0, 5]] = 0.0
    _agree(gaugec.compile(model, inputs), expect_stabiliser=True)


def test_a_wide_mlp_is_ranked_from_structure_without_the_basis(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1024), nn.ReLU(), nn.Linear(1024, 3))
    inputs = (torch.randn(5, 4),)
    plan = gaugec.compile(model, inputs)
    monkeypatch.setattr(tangent, "_dense_rank", None)    # any dense ranking would fail
    # 1024 unit rescales + the logit shift (1024 + 1) + the bias translation of the ReLU's input... all independent
    assert plan.dim == sum(g.dim for g in plan.gauges)
    monkeypatch.setattr(tangent, "BASIS_LIMIT", 1000)
    with pytest.raises(ValueError, match="tangent_operator"):
        plan.tangent_basis()


@pytest.mark.hf
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_hugging_face_models_structural_dimension_equals_dense(arch):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if arch == "llama":
        cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8,
                                       rms_norm_eps=0.0, use_cache=False)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=8,
                                      layer_norm_epsilon=0.0, use_cache=False, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0)
        model = transformers.GPT2LMHeadModel(cfg)
    inputs = (torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(0)),)
    _agree(gaugec.compile(model.eval(), inputs))
