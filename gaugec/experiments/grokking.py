"""E3, grokking at depth: modular addition a + b mod p (p = 23; 80% of the 529 pairs train, the rest test — the
recipe that grokked under AdamW in ``gaugec.bench llc``; at 40% no arm left memorisation within 1,500 steps), a
pre-norm Llama-style transformer as deep as two CPU cores allow, full-batch, a fixed step budget.

The paper's claim (``shared/research/ddc.md``, E3): at depth 24, DDCMuon groks in 10 of 11 seeds where Muon groks in
none. Arms: torch.optim.Muon + AdamW, DDCMuon, and DDCMuon without the per-step sweep, the same routing (hidden
matrices to Muon, embeddings, gains and the head to AdamW); grid Muon lr ∈ {0.01, 0.02} at weight decay 1 (the
weight decay grokking recipes use; a 2 × 2 grid with 0.1 at depth 8 and 5 seeds is four hours of two cores), AdamW
path lr 3·10⁻³; 2,000 steps. A seed groks when its test accuracy reaches 0.99; the step is the first evaluation
where it does.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from gaugec.experiments.common import by_config, metric_table, plot_curves, reference_config

P, TRAIN_FRACTION = 23, 0.8
DEPTH, D = 8, 32
GRID = [(0.01, 1.0), (0.02, 1.0)]
REFERENCE = "lr 0.02, wd 1.0"
PAPER = "10 of 11 seeds (DDCMuon) vs 0 of 11 (Muon), depth 24"


def modular_data(seed: int = 0):
    """All pairs (a, b) as two-token sequences with label (a + b) mod p, split by a fixed permutation."""
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    x = torch.stack([a.reshape(-1), b.reshape(-1)], 1)
    y = (x[:, 0] + x[:, 1]) % P
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n = int(TRAIN_FRACTION * len(x))
    return (x[perm[:n]], y[perm[:n]]), (x[perm[n:]], y[perm[n:]])


def model_for(seed: int, depth: int = DEPTH):
    from gaugec.zoo import TinyLlama

    torch.manual_seed(seed)
    return TinyLlama(vocab=P, d=D, n_layers=depth, n_heads=4, n_kv_heads=4, d_ff=4 * D, eps=1e-6)


ARMS = ("Muon + AdamW", "DDCMuon", "DDCMuon, no per-step sweep")


def _arms(lr, wd):
    from gaugec.optim import tasks

    hp = dict(lr=lr, weight_decay=wd, adamw_lr=3e-3)
    return dict(zip(ARMS, (tasks.muon_factory(**hp), tasks.ddcmuon_factory(**hp),
                           tasks.ddcmuon_factory(**hp, rebalance_sweeps=0))))


def train(arm: str, lr: float, wd: float, seed: int, steps: int, every: int, depth: int, **_recorded) -> dict:
    """One full-batch run; a seed groks at the first evaluation with test accuracy ≥ 0.99. (``_recorded``: the
    settings stored in every row, p and the train fraction, fixed by the module.)"""
    (xt, yt), (xv, yv) = modular_data()
    model = model_for(seed, depth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = _arms(lr, wd)[arm](model, (xt[:4],))
    curve = {"steps": [], "train": [], "val": [], "acc": []}
    grok_step = None
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xt)[:, -1].float(), yt).backward()      # the answer is read at the last position
        opt.step()
        if step % every == 0 or step == steps:
            with torch.no_grad():
                out = model(xv)[:, -1].float()
                acc = float((out.argmax(-1) == yv).float().mean())
                curve["steps"].append(step)
                curve["train"].append(float(F.cross_entropy(model(xt)[:, -1].float(), yt)))
                curve["val"].append(float(F.cross_entropy(out, yv)))
                curve["acc"].append(acc)
            if grok_step is None and acc >= 0.99:
                grok_step = step
    return {"grokked": grok_step is not None, "grok_step": grok_step, "final_acc": curve["acc"][-1],
            "final_train": curve["train"][-1], "final_val": curve["val"][-1], "best_val": min(curve["val"]),
            "curve": curve}


def describe(r: dict) -> str:
    return f"test acc {r['final_acc']:.3f} grokked {r['grok_step']}"


BUDGET = {True: (300, 50), False: (2000, 100)}
SEEDS = 5
QUICK_CONFIG = (0.02, 1.0)


def settings(quick: bool, depth: int | None) -> dict:
    """The depth (2 for --quick) and the task, stored in every row."""
    return {"depth": depth or (2 if quick else DEPTH), "p": P, "train_fraction": TRAIN_FRACTION}


def table(rows: list[dict]) -> str:
    for r in rows:
        r["grokked_n"] = 1.0 if r["grokked"] else 0.0
        r["grok_step_or_budget"] = r["grok_step"] if r["grok_step"] is not None else float(r["steps"])
    cols = [("grokked (1 = test acc ≥ 0.99)", "grokked_n", ".2f"), ("step (budget if not)", "grok_step_or_budget", ".0f"),
            ("final test acc", "final_acc", ".3f"), ("final test loss", "final_val", ".3f")]
    reference = reference_config(rows, REFERENCE)
    depth = rows[0]["depth"]
    return (f"Modular addition p = {P}, train fraction {TRAIN_FRACTION}, depth {depth}, d {D}, full batch.\n\n"
            + metric_table(rows, cols, reference))


def summary(rows: list[dict]) -> str:
    groups = by_config(rows)
    reference = reference_config(rows, REFERENCE)
    count = {o: (sum(r["grokked"] for r in groups[(reference, o)]), len(groups[(reference, o)]))
             for c, o in groups if c == reference}
    total = {}
    for (c, o), rs in groups.items():
        g, n = total.get(o, (0, 0))
        total[o] = (g + sum(r["grokked"] for r in rs), n + len(rs))
    words = ", ".join(f"{o} {g}/{n}" for o, (g, n) in count.items())
    grid = ", ".join(f"{o} {g}/{n}" for o, (g, n) in total.items())
    d, m = count.get("DDCMuon", (0, 1)), count.get("Muon + AdamW", (0, 1))
    if d[0] > m[0]:
        verdict = "reproduced in direction" if d[0] - m[0] >= 2 else "in direction, too few seeds to call"
    elif d[0] < m[0]:
        verdict = "reversed"
    else:
        verdict = "not reproduced"
    return (f"E3 grokking at depth {rows[0]['depth']}, seeds grokked at {reference}: {words} (whole grid: {grid}); "
            f"paper {PAPER}: {verdict}")


def plot(rows: list[dict], path: str):
    reference = reference_config(rows, REFERENCE)
    plot_curves(rows, path, f"E3 grokking, depth {rows[0]['depth']}: test accuracy ({reference})",
                ylabel="test accuracy", key="acc", config=reference)


