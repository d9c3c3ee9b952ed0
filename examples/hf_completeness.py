"""Completeness on Hugging Face architectures the rules were not written against: tiny configs (hidden 16, one layer,
eps 0, positions = sequence length, no padding row), the oracle's nullity against the found rank. Dead coordinates
(rows no input reaches) count as missed here, so the ratio is a lower bound.

A one-layer *parallel* block (GPT-NeoX, GPT-J, Falcon) feeds its MLP the token's embedding alone: 32 tokens are 32
points, and the token-only path (embedding, MLP) then has null directions on that finite domain that are no gauge of
the architecture (they vanish with a real vocabulary: GPT-NeoX counts 41 of them at vocabulary 32 and none at 64).
Those models get a vocabulary of 64 and an MLP of width 8. Needs transformers (the dev extra).
Run: python examples/hf_completeness.py [NAME ...]"""
import sys
import time
import warnings

import torch
import transformers as T

import gaugec

warnings.simplefilter("ignore")
V, TOK = 32, 6
V_PARALLEL = 64     # the vocabulary of the one-layer parallel blocks (see above)
C = dict(vocab_size=V, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
         max_position_embeddings=TOK, use_cache=False, pad_token_id=None)
NARROW = 8      # the MLP width of the one-layer parallel blocks (see above)
DROP = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def causal(cfg):
    return lambda: T.AutoModelForCausalLM.from_config(cfg())


MODELS = {
    "llama": causal(lambda: T.LlamaConfig(**C, num_key_value_heads=1, rms_norm_eps=0.0)),
    "mistral": causal(lambda: T.MistralConfig(**C, num_key_value_heads=1, rms_norm_eps=0.0)),
    "qwen2": causal(lambda: T.Qwen2Config(**C, num_key_value_heads=2, rms_norm_eps=0.0)),
    "phi3": causal(lambda: T.Phi3Config(**C, num_key_value_heads=2, rms_norm_eps=0.0)),
    "olmo2": causal(lambda: T.Olmo2Config(**C, num_key_value_heads=2, rms_norm_eps=0.0)),
    "stablelm": causal(lambda: T.StableLmConfig(**C, num_key_value_heads=1, layer_norm_eps=0.0)),
    "gptneox": causal(lambda: T.GPTNeoXConfig(**{**C, "intermediate_size": NARROW, "vocab_size": V_PARALLEL},
                                              layer_norm_eps=0.0)),
    "falcon": causal(lambda: T.FalconConfig(vocab_size=V_PARALLEL, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                            ffn_hidden_size=NARROW, layer_norm_epsilon=0.0, use_cache=False,
                                            pad_token_id=None)),
    "gptj": causal(lambda: T.GPTJConfig(vocab_size=V_PARALLEL, n_embd=16, n_layer=1, n_head=2, n_positions=TOK, rotary_dim=4,
                                        n_inner=NARROW, layer_norm_epsilon=0.0, use_cache=False, pad_token_id=None)),
    "llama4": causal(lambda: T.Llama4TextConfig(**{**C, "num_attention_heads": 2}, intermediate_size_mlp=24, head_dim=8,
                                                num_key_value_heads=1, rms_norm_eps=0.0, interleave_moe_layer_step=2,
                                                no_rope_layers=[1], use_qk_norm=True, attn_temperature_tuning=False,
                                                rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    "mixtral": causal(lambda: T.MixtralConfig(**{**C, "intermediate_size": 12}, num_key_value_heads=1,
                                              rms_norm_eps=0.0, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": causal(lambda: T.Qwen2MoeConfig(**C, num_key_value_heads=1, rms_norm_eps=0.0, moe_intermediate_size=8,
                                                 shared_expert_intermediate_size=8, num_experts=4,
                                                 num_experts_per_tok=2)),
    "gpt2_untied": causal(lambda: T.GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2, n_positions=TOK,
                                               use_cache=False, layer_norm_epsilon=0.0, tie_word_embeddings=False)),
    # two layers: in one, the class token's query is a constant and the oracle counts its kernel as null
    "vit": lambda: T.ViTForImageClassification(T.ViTConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                                           intermediate_size=8, image_size=4, patch_size=2,
                                                           num_channels=1, num_labels=3, layer_norm_eps=0.0, **DROP)),
    "bert": lambda: T.AutoModelForMaskedLM.from_config(T.BertConfig(**C, type_vocab_size=1, layer_norm_eps=0.0,
                                                                    **DROP)),
}


def main(names):
    ids = (torch.randint(0, V, (2, TOK), generator=torch.Generator().manual_seed(0)),)
    images = (torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0)),)
    total_found = total_null = 0
    print(f"{'model':14s} {'found':>6s} {'oracle':>6s} {'ratio':>6s} {'gap':>8s} {'sound':>6s}  missed by module (top 3)")
    for name in names:
        t0 = time.time()
        torch.manual_seed(0)
        model = MODELS[name]().eval()
        inputs = images if name == "vit" else ids
        plan = gaugec.compile(model, inputs)
        rep = gaugec.verify(model, inputs, plan)
        top = sorted(rep.modules, key=lambda r: -r.missed)[:3]
        where = ", ".join(f"{r.module} {r.missed:.1f}" for r in top if r.missed > 0.5)
        total_found += rep.found_rank
        total_null += rep.nullity
        print(f"{name:14s} {rep.found_rank:6d} {rep.nullity:6d} {rep.found_rank / rep.nullity:6.1%} {rep.gap:8.1e} "
              f"{str(rep.sound):>6s}  {where} ({time.time() - t0:.0f}s)", flush=True)
    print(f"{'all':14s} {total_found:6d} {total_null:6d} {total_found / total_null:6.1%}")


if __name__ == "__main__":
    main(sys.argv[1:] or list(MODELS))
