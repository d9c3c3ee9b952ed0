"""E2, a vision transformer from scratch: the 8×8 handwritten digits that scikit-learn ships
(``sklearn.datasets.load_digits``: 1,797 images, 10 classes; a fixed split of 1,200 to train, 597 to validate).

The paper's claim (``shared/research/ddc.md``, E2): a ViT trained from scratch reaches validation loss 1.71 under
DDCAdam against 2.12 under a matched AdamW, with DDCAdam compressing feed-forward capacity that AdamW leaves
intact. Model: 2×2 patches (16 tokens), d 32, 2 pre-norm blocks of 4-head attention and a GELU MLP of width 128
(four times d: spare capacity on 1,200 images), mean-pooled into a LayerNorm and a linear head. Arms: AdamW,
DDCAdam, DDCAdam without the per-step sweep; grid lr ∈ {1e-3, 3e-3} × weight decay ∈ {0, 0.1}; minibatches of 64,
the same per seed. The MLP capacity left is read at the end with ``gaugec.measure.layer_readings`` on each block's
GELU output over the validation images: the numerical rank (singular values above 10⁻³ of the largest) and the
effective rank exp(entropy of σ²/Σσ²).
"""
from __future__ import annotations

import functools
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from gaugec.experiments.common import best_configs, by_config, mean, metric_table, plot_curves, reference_config, \
    verdict
from gaugec.experiments.overtrain import ARMS, _arms, settings  # noqa: F401  (the same arms and settings)

GRID = [(lr, wd) for lr in (1e-3, 3e-3) for wd in (0.0, 0.1)]
REFERENCE = "lr 0.003, wd 0.1"
PAPER = "1.71 (DDCAdam) vs 2.12 (AdamW)"


class Block(nn.Module):
    def __init__(self, d: int, heads: int, hidden: int):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.fc, self.act, self.proj = nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d)

    def forward(self, x):
        B, T, d = x.shape
        y = self.ln1(x)
        q, k, v = (lin(y).view(B, T, self.h, self.dh).transpose(1, 2) for lin in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, d))
        return x + self.proj(self.act(self.fc(self.ln2(x))))


class TinyViT(nn.Module):
    """8×8 images → 2×2 patches → d-dimensional tokens with learned positions → blocks → mean → LayerNorm → head."""

    def __init__(self, d: int = 32, depth: int = 2, heads: int = 4, hidden: int = 128, classes: int = 10,
                 patch: int = 2, side: int = 8):
        super().__init__()
        self.patch = patch
        n = (side // patch) ** 2
        self.embed = nn.Linear(patch * patch, d)
        self.pos = nn.Parameter(torch.randn(1, n, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, img):                       # img: [B, 8, 8]
        B, s = img.shape[0], self.patch
        x = img.unfold(1, s, s).unfold(2, s, s).reshape(B, -1, s * s)
        x = self.embed(x) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x.mean(1)))


@functools.cache
def digits():
    """(train images, labels), (validation images, labels): a fixed split of scikit-learn's digits, scaled to
    [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise SystemExit("the vit experiment needs scikit-learn: pip install 'gaugec[experiments]'") from exc
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, va = perm[:1200], perm[1200:]
    return (x[tr], y[tr]), (x[va], y[va])


def capacity(model, x, y) -> dict:
    """Numerical and effective rank of each block's MLP activations (the GELU output) over ``x``."""
    from gaugec import measure

    out = {}
    for i in range(len(model.blocks)):
        r = measure.layer_readings(model, x, y, f"blocks.{i}.act")
        s = torch.as_tensor(r.activation_spectrum, dtype=torch.float64)
        p = s ** 2 / (s ** 2).sum()
        out[f"rank_{i}"] = int((s > 1e-3 * s.max()).sum())
        out[f"erank_{i}"] = float(torch.exp(-(p * p.clamp_min(1e-300).log()).sum()))
    return out


def train(arm: str, lr: float, wd: float, seed: int, steps: int, every: int) -> dict:
    """One run: minibatches of 64 drawn by the seed, evaluation every ``every`` steps, the MLP capacity at the end."""
    (xt, yt), (xv, yv) = digits()
    torch.manual_seed(seed)
    model = TinyViT()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = _arms(lr, wd)[arm](model, (xt[:8],))
    gen = torch.Generator().manual_seed(seed)
    curve = {"steps": [], "train": [], "val": [], "acc": []}
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(xt), (64,), generator=gen)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xt[idx]), yt[idx]).backward()
        opt.step()
        if step % every == 0 or step == steps:
            with torch.no_grad():
                logits = model(xv)
                curve["steps"].append(step)
                curve["train"].append(float(F.cross_entropy(model(xt), yt)))
                curve["val"].append(float(F.cross_entropy(logits, yv)))
                curve["acc"].append(float((logits.argmax(-1) == yv).float().mean()))
    best = min(range(len(curve["val"])), key=curve["val"].__getitem__)
    return {"final_train": curve["train"][-1], "final_val": curve["val"][-1], "val_acc": curve["acc"][-1],
            "best_val": curve["val"][best], "best_step": curve["steps"][best], "curve": curve,
            **capacity(model.eval(), xv, yv)}


def describe(r: dict) -> str:
    return (f"val {r['final_val']:.3f} acc {r['val_acc']:.3f} best {r['best_val']:.3f} @ {r['best_step']} "
            f"MLP rank {r['rank_0']}/{r['rank_1']} erank {r['erank_0']:.1f}/{r['erank_1']:.1f}")


BUDGET = {True: (150, 50), False: (1500, 100)}
SEEDS = 3
QUICK_CONFIG = (3e-3, 0.1)


def table(rows: list[dict]) -> str:
    cols = [("final val", "final_val", ".3f"), ("val acc", "val_acc", ".3f"), ("best val", "best_val", ".3f"),
            ("MLP rank b0", "rank_0", ".0f"), ("MLP rank b1", "rank_1", ".0f"), ("eff. rank b0", "erank_0", ".1f"),
            ("eff. rank b1", "erank_1", ".1f")]
    reference = reference_config(rows, REFERENCE)
    return metric_table(rows, cols, reference)


def summary(rows: list[dict]) -> str:
    groups = by_config(rows)
    reference = reference_config(rows, REFERENCE)
    best = best_configs(rows)

    def at(configs, key):
        return {o: [r[key] if key != "erank" else r["erank_0"] + r["erank_1"] for r in groups[(configs[o], o)]]
                for o in configs}

    same = {o: reference for c, o in groups if c == reference}
    val, val_best = at(same, "final_val"), at(best, "final_val")
    er, er_best = at(same, "erank"), at(best, "erank")
    return (f"E2 ViT on digits, final validation loss (paper {PAPER}). Same hyperparameters ({reference}): DDCAdam "
            f"{mean(val['DDCAdam']):.3f} vs AdamW {mean(val['AdamW']):.3f}, ablation "
            f"{mean(val['DDCAdam, no per-step sweep']):.3f}: {verdict(val['AdamW'], val['DDCAdam'])}. Each at its "
            f"best config: DDCAdam {mean(val_best['DDCAdam']):.3f} ({best['DDCAdam']}) vs AdamW "
            f"{mean(val_best['AdamW']):.3f} ({best['AdamW']}): {verdict(val_best['AdamW'], val_best['DDCAdam'])}. "
            f"MLP effective rank, both blocks (compression claimed): DDCAdam {mean(er['DDCAdam']):.1f} vs AdamW "
            f"{mean(er['AdamW']):.1f} at the same config ({verdict(er['AdamW'], er['DDCAdam'])}), "
            f"{mean(er_best['DDCAdam']):.1f} vs {mean(er_best['AdamW']):.1f} at each arm's best "
            f"({verdict(er_best['AdamW'], er_best['DDCAdam'])}).")


def plot(rows: list[dict], path: str):
    reference = reference_config(rows, REFERENCE)
    plot_curves(rows, path, f"E2 ViT from scratch on 8×8 digits: validation loss ({reference})", config=reference)


