"""The DDC optimizers against their bases (issues 4 and 10): equivariance and parity.

equivariance: worst relative gap of f along 50 float64 steps between runs from θ and g·θ (g a large random element
of every gauge at once, and of each family alone: the worst family is reported), for AdamW, DDCAdam,
torch.optim.Muon + AdamW and DDCMuon on the zoo's ReLU-MLP, Llama-GQA and GPT-2.
parity: final validation loss on the char-level Llama and the teacher classifier of ``gaugec.optim.tasks``, the
same batches, steps and hyperparameters for every arm, with the no-sweep ablation (``rebalance_sweeps=0``) of each
DDC optimizer.
"""
from __future__ import annotations

import warnings

import torch

from gaugec.bench.tables import md_table

EQ_STEPS = 50
EQ_HP = {"AdamW": dict(lr=1e-2, weight_decay=0.1), "Muon": dict(lr=2e-2, adamw_lr=1e-2, weight_decay=0.1)}
PARITY = {  # task -> (steps, Adam-family hyperparameters, Muon-family hyperparameters)
    "char-level Llama, 200 steps": (200, dict(lr=3e-3, weight_decay=0.1),
                                    dict(lr=2e-2, adamw_lr=3e-3, weight_decay=0.1)),
    "teacher classifier, 300 steps": (300, dict(lr=3e-3, weight_decay=0.1),
                                      dict(lr=5e-3, adamw_lr=3e-3, weight_decay=0.1)),
}


def _optimizers():
    from gaugec.optim import DDCAdam, DDCMuon, tasks

    return {
        "AdamW": lambda m, plan: torch.optim.AdamW(m.parameters(), **EQ_HP["AdamW"]),
        "DDCAdam": lambda m, plan: DDCAdam(m.parameters(), plan, **EQ_HP["AdamW"]),
        "Muon + AdamW": lambda m, plan: tasks.MuonAdamW(m, plan, **EQ_HP["Muon"]),
        "DDCMuon": lambda m, plan: DDCMuon(m.parameters(), plan, **EQ_HP["Muon"]),
    }


def bench_equivariance(models=("relu_mlp", "llama_gqa", "gpt2")) -> list[dict]:
    import gaugec
    from gaugec.optim import tasks

    rows = []
    for name in models:
        model, inputs = tasks.float64_zoo(name)
        plan = gaugec.compile(model, inputs)
        batches = tasks.label_batches(model, inputs, plan, EQ_STEPS)
        full = plan.random_element(torch.Generator().manual_seed(1), spread=100.0, gl_spread=3.0)
        families = sorted({g.family for g in plan.gauges})
        alone = {}
        for i, fam in enumerate(families):
            el = plan.random_element(torch.Generator().manual_seed(201 + i), spread=100.0, gl_spread=3.0)
            alone[fam] = [e if g.family == fam else g.identity_element() for g, e in zip(plan.gauges, el)]
        for opt_name, make in _optimizers().items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = tasks.run_from(model, inputs, plan, batches, None, make)[0]
                gap_all = tasks.worst_step_gap(ref, tasks.run_from(model, inputs, plan, batches, full, make)[0])
                per_family = {fam: tasks.worst_step_gap(ref, tasks.run_from(model, inputs, plan, batches, el, make)[0])
                              for fam, el in alone.items()}
            worst = max(per_family, key=per_family.get)
            rows.append({"model": name, "optimizer": opt_name, "all": gap_all, "worst_family": worst,
                         "worst_family_gap": per_family[worst], "families": len(families)})
    return rows


def bench_parity(seeds=(0, 1), progress=print) -> list[dict]:
    from gaugec.optim import tasks

    rows = []
    for task, (steps, adam_hp, muon_hp) in PARITY.items():
        arms = {"AdamW": tasks.adamw_factory(**adam_hp), "DDCAdam": tasks.ddcadam_factory(**adam_hp),
                "DDCAdam, no per-step sweep": tasks.ddcadam_factory(**adam_hp, rebalance_sweeps=0),
                "Muon + AdamW": tasks.muon_factory(**muon_hp), "DDCMuon": tasks.ddcmuon_factory(**muon_hp),
                "DDCMuon, no per-step sweep": tasks.ddcmuon_factory(**muon_hp, rebalance_sweeps=0)}
        for seed in seeds:
            for arm, factory in arms.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if task.startswith("char"):
                        curve = tasks.train_char_lm(factory, steps=steps, seed=seed, eval_every=steps,
                                                    model=tasks.char_llama(seed=seed))
                    else:
                        curve = tasks.train_classifier(factory, steps=steps, seed=seed)
                rows.append({"task": task, "optimizer": arm, "seed": seed, "val": curve.final_val})
                if progress:
                    progress(f"  {task} seed {seed} {arm}: {curve.final_val:.3f}")
    return rows


def format_ddc(eq_rows: list[dict], parity_rows: list[dict]) -> str:
    eq = md_table(["model", "optimizer", "g: every family at once", "g: one family alone, worst (which)"],
                  [[r["model"], r["optimizer"], f"{r['all']:.1e}",
                    f"{r['worst_family_gap']:.1e} ({r['worst_family']})"] for r in eq_rows])
    by: dict[tuple, list] = {}
    for r in parity_rows:
        by.setdefault((r["task"], r["optimizer"]), []).append(r["val"])
    base = {"AdamW": "AdamW", "DDCAdam": "AdamW", "DDCAdam, no per-step sweep": "AdamW",
            "Muon + AdamW": "Muon + AdamW", "DDCMuon": "Muon + AdamW", "DDCMuon, no per-step sweep": "Muon + AdamW"}
    par = md_table(["task", "optimizer", "final val loss (per seed)", "mean", "/ its base"],
                   [[task, arm, " / ".join(f"{v:.3f}" for v in vals), f"{sum(vals) / len(vals):.3f}",
                     f"{sum(vals) / sum(by[(task, base[arm])]):.3f}"] for (task, arm), vals in by.items()])
    return "\n".join(eq + [""] + par)
