import os
import tempfile

import pytest
import torch

# a private lemma cache per test session, so sympy really runs
os.environ.setdefault("GAUGEC_CACHE", tempfile.mkdtemp(prefix="gaugec-test-cache-"))
torch.set_num_threads(2)
# a discovery rule that raises fails the test instead of becoming a silent barrier (a test that wants the barrier
# behaviour sets strict=False)
os.environ["GAUGEC_STRICT"] = "1"
# tests exercise discovery itself (and some patch its helpers); the memo's own tests turn it on
os.environ["GAUGEC_DISCOVERY_MEMO"] = "0"


def family_dims(plan) -> dict:
    out = {}
    for g in plan.gauges:
        out[g.family] = out.get(g.family, 0) + g.dim
    return out


def tiny_llama4(qk_norm: bool) -> torch.nn.Module:
    """A dense one-layer Hugging Face Llama-4 (complex-written RoPE; its QK L2 norm when ``qk_norm``), eps 0, rope θ
    10⁴ (at 5·10⁵ the slowest pair barely turns over 6 positions); needs transformers."""
    import transformers
    cfg = transformers.Llama4TextConfig(
        vocab_size=32, hidden_size=16, intermediate_size=24, intermediate_size_mlp=24, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=6, rms_norm_eps=0.0,
        use_cache=False, pad_token_id=None, interleave_moe_layer_step=2, no_rope_layers=[1], use_qk_norm=qk_norm,
        attn_temperature_tuning=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(0)
    return transformers.Llama4ForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def llama_plan():
    import gaugec
    from gaugec import zoo

    model, inputs = zoo.llama()
    return model, inputs, gaugec.compile(model, inputs)


EQUIVARIANCE_STEPS = 50


@pytest.fixture(scope="module", params=["llama_gqa", "gpt2", "relu_mlp", "moe_mlp"])
def setup(request):
    """(name, float64 model, inputs, plan, label batches) for the equivariance tests of every DDC optimizer."""
    import gaugec
    from gaugec.optim import tasks

    model, inputs = tasks.float64_zoo(request.param)
    plan = gaugec.compile(model, inputs, loss="cross_entropy")
    return request.param, model, inputs, plan, tasks.label_batches(model, inputs, plan, EQUIVARIANCE_STEPS)
