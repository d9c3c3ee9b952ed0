"""Hugging Face causal LMs at tiny size with their norms at eps = 0, where the input-scale and residual-sum rules
fire: every plan must compile with nothing rejected and every generator sound (the oracle's soundness check).
Needs transformers (the dev extra). Run: python examples/hf_eps0_sweep.py"""
import torch, warnings, gaugec, transformers as T, time, traceback
warnings.simplefilter("ignore")
V = 32
def ids(): return (torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(0)),)
common = dict(vocab_size=V, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
              max_position_embeddings=16, use_cache=False)
cfgs = {
 "llama": T.LlamaConfig(**common, num_key_value_heads=1, rms_norm_eps=0.0),
 "mistral": T.MistralConfig(**common, num_key_value_heads=1, rms_norm_eps=0.0),
 "qwen2": T.Qwen2Config(**common, num_key_value_heads=2, rms_norm_eps=0.0),
 "gemma": T.GemmaConfig(**common, num_key_value_heads=1, head_dim=8, rms_norm_eps=0.0),
 "phi3": T.Phi3Config(**common, num_key_value_heads=2, rms_norm_eps=0.0, pad_token_id=0),
 "olmo2": T.Olmo2Config(**common, num_key_value_heads=2, rms_norm_eps=0.0),
 "stablelm": T.StableLmConfig(**common, num_key_value_heads=1, layer_norm_eps=0.0),
 "gptneox": T.GPTNeoXConfig(vocab_size=V, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16, use_cache=False, layer_norm_eps=0.0, use_parallel_residual=True),
 "gptj": T.GPTJConfig(vocab_size=V, n_embd=16, n_layer=2, n_head=2, n_positions=16, rotary_dim=4, use_cache=False, layer_norm_epsilon=0.0),
 "gpt2": T.GPT2Config(vocab_size=V, n_embd=16, n_layer=2, n_head=2, n_positions=16, use_cache=False, layer_norm_epsilon=0.0),
 "cohere": T.CohereConfig(**common, num_key_value_heads=1, layer_norm_eps=0.0),
}
for name, cfg in cfgs.items():
    t0 = time.time()
    try:
        torch.manual_seed(0)
        cls = T.AutoModelForCausalLM.from_config(cfg).eval()
        plan = gaugec.compile(cls, ids())
        rep = gaugec.verify(cls, ids(), plan, soundness_only=True)
        fams = {}
        for g in plan.gauges: fams[g.family] = fams.get(g.family, 0) + g.dim
        print(f"{name}: dim {plan.dim} rejected {[ (g.name, g.numeric_residual) for g in plan.rejected]} sound {rep.sound} scale {fams.get('norm_input_scale', 0)} ({time.time()-t0:.0f}s)", flush=True)
    except Exception as e:
        print(name, "ERROR", type(e).__name__, str(e)[:200], flush=True)
