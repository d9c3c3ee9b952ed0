"""Completeness on Hugging Face architectures the rules were not written against: tiny configs (hidden 16, one layer,
eps 0, positions = sequence length, no padding row), the oracle's nullity against the found rank. Dead coordinates
(rows no input reaches) count as missed here, so the ratio is a lower bound. Needs transformers (the dev extra).
Run: python examples/hf_completeness.py [NAME ...]"""
import sys
import time
import warnings

import torch
import transformers as T

import gaugec

warnings.simplefilter("ignore")
V, TOK = 32, 6
C = dict(vocab_size=V, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
         max_position_embeddings=TOK, use_cache=False, pad_token_id=None)
MODELS = {
    "llama": lambda: T.LlamaConfig(**C, num_key_value_heads=1, rms_norm_eps=0.0),
    "mistral": lambda: T.MistralConfig(**C, num_key_value_heads=1, rms_norm_eps=0.0),
    "qwen2": lambda: T.Qwen2Config(**C, num_key_value_heads=2, rms_norm_eps=0.0),
    "phi3": lambda: T.Phi3Config(**C, num_key_value_heads=2, rms_norm_eps=0.0),
    "olmo2": lambda: T.Olmo2Config(**C, num_key_value_heads=2, rms_norm_eps=0.0),
    "stablelm": lambda: T.StableLmConfig(**C, num_key_value_heads=1, layer_norm_eps=0.0),
    "gptneox": lambda: T.GPTNeoXConfig(**C, layer_norm_eps=0.0),
    "mixtral": lambda: T.MixtralConfig(**{**C, "intermediate_size": 12}, num_key_value_heads=1, rms_norm_eps=0.0,
                                       num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": lambda: T.Qwen2MoeConfig(**C, num_key_value_heads=1, rms_norm_eps=0.0, moe_intermediate_size=8,
                                          shared_expert_intermediate_size=8, num_experts=4, num_experts_per_tok=2),
    "gpt2_untied": lambda: T.GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2, n_positions=TOK,
                                        use_cache=False, layer_norm_epsilon=0.0, tie_word_embeddings=False),
}


def main(names):
    ids = (torch.randint(0, V, (2, TOK), generator=torch.Generator().manual_seed(0)),)
    total_found = total_null = 0
    print(f"{'model':14s} {'found':>6s} {'oracle':>6s} {'ratio':>6s} {'gap':>8s} {'sound':>6s}  missed by module (top 3)")
    for name in names:
        t0 = time.time()
        torch.manual_seed(0)
        model = T.AutoModelForCausalLM.from_config(MODELS[name]()).eval()
        plan = gaugec.compile(model, ids)
        rep = gaugec.verify(model, ids, plan)
        top = sorted(rep.modules, key=lambda r: -r.missed)[:3]
        where = ", ".join(f"{r.module} {r.missed:.1f}" for r in top if r.missed > 0.5)
        total_found += rep.found_rank
        total_null += rep.nullity
        print(f"{name:14s} {rep.found_rank:6d} {rep.nullity:6d} {rep.found_rank / rep.nullity:6.1%} {rep.gap:8.1e} "
              f"{str(rep.sound):>6s}  {where} ({time.time() - t0:.0f}s)", flush=True)
    print(f"{'all':14s} {total_found:6d} {total_null:6d} {total_found / total_null:6.1%}")


if __name__ == "__main__":
    main(sys.argv[1:] or list(MODELS))
