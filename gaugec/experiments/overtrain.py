"""E1, over-training: a character-level Llama trained far past its best validation point on a training set small
enough to memorise (the first 18,000 characters of a few standard-library modules; the next 2,000 validate).

The paper's claim (``shared/research/ddc.md``, E1): trained past the point of fit, a language model keeps a
validation-minus-train gap of 0.67 under DDCAdam against 5.88 under AdamW. Arms: AdamW, DDCAdam, and DDCAdam
without the per-step sweep; grid lr ∈ {1e-3, 3e-3} × weight decay ∈ {0, 0.1}; the same batches per seed.
"""
from __future__ import annotations

import warnings

from gaugec.experiments.common import best_configs, by_config, mean, metric_table, plot_curves, reference_config, \
    verdict

TEXT_CHARS = 20_000
MODEL = dict(d=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=256)
GRID = [(lr, wd) for lr in (1e-3, 3e-3) for wd in (0.0, 0.1)]
REFERENCE = "lr 0.003, wd 0.1"
PAPER = "0.67 (DDCAdam) vs 5.88 (AdamW)"


ARMS = ("AdamW", "DDCAdam", "DDCAdam, no per-step sweep")


def _arms(lr, wd):
    """Arm name → optimizer factory (E2 uses the same arms)."""
    from gaugec.optim import tasks

    return dict(zip(ARMS, (tasks.adamw_factory(lr=lr, weight_decay=wd), tasks.ddcadam_factory(lr=lr, weight_decay=wd),
                           tasks.ddcadam_factory(lr=lr, weight_decay=wd, rebalance_sweeps=0))))


def train(arm: str, lr: float, wd: float, seed: int, steps: int, every: int) -> dict:
    """One run: the char Llama on the memorisable text, evaluated every ``every`` steps on train and validation."""
    from gaugec.optim import tasks

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        curve = tasks.train_char_lm(_arms(lr, wd)[arm], steps=steps, seed=seed, eval_every=every,
                                    text=tasks.char_corpus()[:TEXT_CHARS], model=tasks.char_llama(seed=seed, **MODEL),
                                    eval_train=True)
    best = min(range(len(curve.val)), key=curve.val.__getitem__)
    return {"final_train": curve.train[-1], "final_val": curve.val[-1], "gap": curve.val[-1] - curve.train[-1],
            "best_val": curve.val[best], "best_step": curve.steps[best],
            "curve": {"steps": curve.steps, "train": curve.train, "val": curve.val}}


def describe(r: dict) -> str:
    return (f"train {r['final_train']:.3f} val {r['final_val']:.3f} gap {r['gap']:.3f} best {r['best_val']:.3f} "
            f"@ {r['best_step']}")


# what common.run sweeps: (steps, evaluation interval) for --quick and for the full run, seeds, the quick config
BUDGET = {True: (200, 50), False: (3000, 50)}
SEEDS = 3
QUICK_CONFIG = (3e-3, 0.1)


def settings(quick: bool, depth: int | None) -> dict:
    """What ``train`` takes beyond the budget (nothing here; grokking's depth)."""
    return {}


def table(rows: list[dict]) -> str:
    cols = [("final train", "final_train", ".3f"), ("final val", "final_val", ".3f"), ("gap val − train", "gap", ".3f"),
            ("best val", "best_val", ".3f"), ("best step", "best_step", ".0f")]
    reference = reference_config(rows, REFERENCE)
    return metric_table(rows, cols, reference)


def summary(rows: list[dict]) -> str:
    groups = by_config(rows)
    reference = reference_config(rows, REFERENCE)
    best = best_configs(rows)
    gap = {o: [r["gap"] for r in groups[(reference, o)]] for c, o in groups if c == reference}
    gap_best = {o: [r["gap"] for r in groups[(best[o], o)]] for o in best}
    return (f"E1 over-training, gap val − train (paper {PAPER}). Same hyperparameters ({reference}): DDCAdam "
            f"{mean(gap['DDCAdam']):.3f} vs AdamW {mean(gap['AdamW']):.3f}, no-sweep ablation "
            f"{mean(gap['DDCAdam, no per-step sweep']):.3f}: {verdict(gap['AdamW'], gap['DDCAdam'])}. Each arm at "
            f"its best config: DDCAdam {mean(gap_best['DDCAdam']):.3f} ({best['DDCAdam']}) vs AdamW "
            f"{mean(gap_best['AdamW']):.3f} ({best['AdamW']}): {verdict(gap_best['AdamW'], gap_best['DDCAdam'])}.")


def plot(rows: list[dict], path: str):
    reference = reference_config(rows, REFERENCE)
    plot_curves(rows, path, f"E1 over-training: validation loss (char Llama, {reference})", config=reference)
