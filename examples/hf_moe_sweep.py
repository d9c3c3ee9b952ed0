"""Every mixture-of-experts causal LM in the installed transformers, built tiny (hidden 16, one or two layers, 4
experts, top 2, eps 0): does it compile, is every generator sound (the oracle's soundness check), and what is found.
Configs that cannot be built at this size are reported apart from compile failures. Needs transformers (the dev
extra). Run: python examples/hf_moe_sweep.py [NAME ...]"""
import resource
import sys
import time
import traceback
import warnings

import torch
import transformers as T
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

import gaugec

warnings.simplefilter("ignore")
V = 32
SIZES = dict(vocab_size=V, hidden_size=16, intermediate_size=24, moe_intermediate_size=8, ffn_hidden_size=24,
             shared_expert_intermediate_size=8, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
             head_dim=8, num_experts=4, num_local_experts=4, n_routed_experts=4, moe_num_experts=4,
             num_experts_per_tok=2, moe_topk=2, top_k=2, n_group=1, topk_group=1, first_k_dense_replace=0,
             max_position_embeddings=16, use_cache=False, rms_norm_eps=0.0, layer_norm_eps=0.0,
             pad_token_id=0, bos_token_id=0, eos_token_id=0, kv_lora_rank=8, q_lora_rank=8, qk_rope_head_dim=4,
             qk_nope_head_dim=4, v_head_dim=8, num_shared_experts=1, n_shared_experts=1, router_hidden_size=8)
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def moe_model_types():
    out = []
    for model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        try:
            cfg = T.AutoConfig.for_model(model_type)
        except Exception:  # noqa: BLE001 - not constructible without arguments
            continue
        if any(getattr(cfg, k, None) for k in EXPERT_KEYS):
            out.append(model_type)
    return out


def tiny(model_type):
    cfg = T.AutoConfig.for_model(model_type)
    for k, v in SIZES.items():
        if hasattr(cfg, k):
            setattr(cfg, k, v)
    if hasattr(cfg, "qk_rope_head_dim"):         # multi-head latent attention: the rotary part is the head_dim,
        cfg.head_dim = cfg.qk_rope_head_dim      # and every head has its own keys and values
        cfg.num_key_value_heads = cfg.num_attention_heads
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(cfg).eval()


def main(names):
    ids = (torch.randint(1, V, (2, 6), generator=torch.Generator().manual_seed(0)),)
    counts = {"compiled": 0, "failed": 0, "export fails": 0, "not built": 0, "unsound": 0}
    for name in names:
        t0 = time.time()
        try:
            model = tiny(name)
            n = sum(p.numel() for p in model.parameters())
            if n > 200_000:
                raise ValueError(f"{n} parameters: a size attribute this sweep does not know")
            model(*ids)
        except Exception as exc:  # noqa: BLE001
            counts["not built"] += 1
            print(f"{name:24s} not built tiny: {type(exc).__name__}: {str(exc)[:100]}", flush=True)
            continue
        try:
            plan = gaugec.compile(model, ids)
        except Exception as exc:  # noqa: BLE001
            try:        # does torch.export itself fail on this tiny model (with the experts dense)?
                with gaugec.capture.dense_experts(model):
                    torch.export.export(model, ids, strict=False)
                counts["failed"] += 1
                what = "COMPILE FAILED"
            except Exception:  # noqa: BLE001
                counts["export fails"] += 1
                what = "torch.export itself fails"
            print(f"{name:24s} {what}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}", flush=True)
            if "-v" in sys.argv:
                traceback.print_exc()
            continue
        counts["compiled"] += 1
        try:
            sound = gaugec.verify(model, ids, plan, soundness_only=True).sound
        except (MemoryError, RuntimeError) as exc:   # the dense tangent basis of a large plan (issue 14)
            sound = f"not checked ({type(exc).__name__})"
        counts["unsound"] += sound is False
        fams = {}
        for g in plan.gauges:
            fams[g.family] = fams.get(g.family, 0) + g.dim
        print(f"{name:24s} generators {sum(g.dim for g in plan.gauges):4d} sound {sound} rejected {len(plan.rejected)} "
              f"glu {fams.get('glu_rescale', 0)} rotation {fams.get('residual_rotation', 0)} "
              f"({time.time() - t0:.0f}s)", flush=True)
    print(counts)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_AS, (12 << 30, resource.RLIM_INFINITY))   # a config that will not shrink fails
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    main(args or moe_model_types())
