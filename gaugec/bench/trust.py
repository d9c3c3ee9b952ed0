"""DDCAdam on the weights people really have (issue 9): what construction does to f and to every live weight, and
how training compares with AdamW and with the ablation arm (DDCAdam without the per-step return to the section).

Construction rows: zero-initialised output projections (zoo Llama-GQA and a Hugging Face Llama), LoRA with B = 0
on a frozen base, rank-deficient linear-linear blocks, a dead ReLU unit with a zero outgoing column, zero norm
gains. Training rows: the char-level Llama on stdlib sources, zero-initialised, and LoRA adapters on a frozen
random base; every arm sees the same batches, steps and hyperparameters, for each seed.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from gaugec.bench.tables import md_table

TRAIN_HP = {"zero-init char Llama": dict(lr=3e-3, weight_decay=0.1),
            "LoRA r=4 on a frozen char Llama": dict(lr=3e-3, weight_decay=0.0)}


def _construction_cases():
    from gaugec import zoo
    from gaugec.optim import tasks

    def zero_llama():
        m, x = zoo.llama_gqa(n_layers=2, eps=1e-6)
        return tasks.zero_init_outputs(m), x

    def hf_llama():
        import transformers

        cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                       use_cache=False)
        torch.manual_seed(0)
        return (tasks.zero_init_outputs(transformers.LlamaForCausalLM(cfg)),
                (torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(0)),))

    def lora():
        m = tasks.add_lora(tasks.char_llama(), targets=("q_proj", "v_proj", "up_proj", "down_proj"), r=4)
        return m, (torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0)),)

    def linear(a, b, c):
        def make():
            torch.manual_seed(0)
            return (nn.Sequential(nn.Linear(a, b, bias=False), nn.Linear(b, c, bias=False)),
                    (torch.randn(8, a, generator=torch.Generator().manual_seed(1)),))
        return make

    def dead_relu():
        m, x = zoo.relu_mlp()
        with torch.no_grad():
            m[0].bias[1] = -1e3
            m[2].weight[:, 3] = 0.0
        return m, x

    def zero_gain():
        m, x = zoo.llama(eps=1e-6)
        with torch.no_grad():
            m.layers[0].input_layernorm.weight[[0, 5]] = 0.0
        return m, x

    return {"zoo Llama-GQA, o_proj = down_proj = 0": zero_llama,
            "HF LlamaForCausalLM, o_proj = down_proj = 0": hf_llama,
            "LoRA r=4 (B = 0) on a frozen char Llama": lora,
            "Linear 5→6→3 (cross entropy)": linear(5, 6, 3),
            "Linear 6→6→6 (cross entropy)": linear(6, 6, 6),
            "Linear 3→3→3 (cross entropy)": linear(3, 3, 3),
            "ReLU MLP: a dead unit, a zero outgoing column": dead_relu,
            "Llama: two zero RMSNorm gains": zero_gain}


def construction_report(model, inputs, plan) -> dict:
    """Build DDCAdam on a float64 copy: relative change of f, the smallest and largest norm ratio over the live
    (non-zero) weights, frozen tensors rewritten, blocks held, sweeps."""
    from gaugec.optim import DDCAdam
    from gaugec.functional import model_f

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        f0 = model_f(model, inputs, plan.loss, plan.f_leaves)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = DDCAdam(model.parameters(), plan)
    with torch.no_grad():
        f1 = model_f(model, inputs, plan.loss, plan.f_leaves)
    ratios = [float(p.detach().norm() / before[n].norm()) for n, p in model.named_parameters()
              if float(before[n].norm()) > 0 and "bias" not in n]
    frozen = sum(not torch.equal(p, before[n]) for n, p in model.named_parameters() if not p.requires_grad)
    return {"df": float((f1 - f0).abs().max() / f0.abs().max()), "min_ratio": min(ratios),
            "max_ratio": max(ratios), "frozen_written": frozen,
            "held": sum(map(len, opt.canonical_report["held"].values())),
            "sweeps": opt.canonical_report["sweeps"]}


def bench_construction() -> list[dict]:
    import gaugec

    rows = []
    for name, make in _construction_cases().items():
        try:
            model, inputs = make()
        except ImportError as exc:
            rows.append({"case": name, "note": f"skipped: {exc}"})
            continue
        model = model.double()
        inputs = tuple(x.double() if x.is_floating_point() else x for x in inputs)
        plan = gaugec.compile(model, inputs)
        rows.append({"case": name, **construction_report(model, inputs, plan)})
    return rows


def bench_training(seeds=(0, 1), steps: int = 200, progress=print) -> list[dict]:
    """Final validation loss of AdamW, DDCAdam and DDCAdam without the per-step sweep (rebalance_sweeps=0), same
    batches per seed; LoRA rows also give the loss each arm removed from the start ('learned')."""
    from gaugec.optim import tasks

    def model_for(task, seed):
        m = tasks.char_llama(seed=seed)
        if task.startswith("zero"):
            return tasks.zero_init_outputs(m)
        return tasks.add_lora(m, targets=("q_proj", "v_proj", "up_proj", "down_proj"), r=4)

    rows = []
    for task, hp in TRAIN_HP.items():
        for seed in seeds:
            start = tasks.train_char_lm(tasks.adamw_factory(lr=0.0), steps=1, model=model_for(task, seed),
                                        seed=seed, eval_every=1).val[0]
            arms = {"AdamW": tasks.adamw_factory(**hp), "DDCAdam": tasks.ddcadam_factory(**hp),
                    "DDCAdam, no per-step sweep": tasks.ddcadam_factory(**hp, rebalance_sweeps=0)}
            for arm, factory in arms.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    curve = tasks.train_char_lm(factory, steps=steps, model=model_for(task, seed), seed=seed,
                                                eval_every=steps)
                rows.append({"task": task, "seed": seed, "optimizer": arm, "start": start,
                             "val": curve.final_val, "learned": start - curve.final_val})
                if progress:
                    progress(f"  {task} seed {seed} {arm}: val {curve.final_val:.3f}")
    return rows


def format_trust(construction: list[dict], training: list[dict]) -> str:
    crow = []
    for r in construction:
        if "note" in r:
            crow.append([r["case"], r["note"], "", "", "", ""])
            continue
        crow.append([r["case"], f"{r['df']:.1e}", f"{r['min_ratio']:.3f} / {r['max_ratio']:.3f}",
                     r["frozen_written"], r["held"], r["sweeps"]])
    lines = md_table(["case (float64)", "max |Δf| / max |f|", "norm ratio after/before, live weights (min / max)",
                      "frozen tensors written", "blocks held", "sweeps"], crow)
    by: dict[tuple, list] = {}
    for r in training:
        by.setdefault((r["task"], r["optimizer"]), []).append(r)
    trow = []
    for (task, arm), rs in by.items():
        adamw = [x["val"] for x in by[(task, "AdamW")]]
        vals = [x["val"] for x in rs]
        trow.append([task, arm, len(rs), " / ".join(f"{v:.3f}" for v in vals),
                     " / ".join(f"{x['learned']:.3f}" for x in rs),
                     " / ".join(f"{v / a:.3f}" for v, a in zip(vals, adamw))])
    lines += ["", *md_table(["task", "optimizer", "seeds", "final val loss (per seed)", "learned (start − final)",
                             "val / AdamW's"], trow)]
    return "\n".join(lines)
