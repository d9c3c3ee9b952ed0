"""Small training tasks on data every machine has, for comparing optimizers (tests, bench, examples).

* a character-level language model on the Python standard library's own source files (or a file you pass);
* a classification task whose labels come from a random teacher network (inputs drawn from N(0, I)).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from gaugec import zoo
from gaugec.functional import float64_twin, model_f
from gaugec.optim.adam import DDCAdam
from gaugec.optim.muon import DDCMuon, muon_parameters
from gaugec.pipeline import compile as compile_plan
from gaugec.zoo import TinyLlama

STDLIB_FILES = ("textwrap.py", "argparse.py", "functools.py", "dataclasses.py", "inspect.py")


def char_corpus(path: str | None = None, max_bytes: int = 400_000) -> torch.Tensor:
    """Bytes (as int64 tokens < 128) of ``path``, or of a few standard-library modules."""
    if path is not None:
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes)
    else:
        libdir = os.path.dirname(os.__file__)
        raw = b""
        for name in STDLIB_FILES:
            full = os.path.join(libdir, name)
            if os.path.exists(full):
                with open(full, "rb") as fh:
                    raw += fh.read()
            if len(raw) >= max_bytes:
                break
        if not raw:
            raise FileNotFoundError(f"no standard-library sources under {libdir} (python {sys.version.split()[0]})")
        raw = raw[:max_bytes]
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(torch.int64)
    return data % 128


def char_llama(vocab: int = 128, d: int = 48, n_layers: int = 2, n_heads: int = 4, n_kv_heads: int = 2,
               d_ff: int = 96, seed: int = 0, eps: float = 1e-6):

    torch.manual_seed(seed)
    return TinyLlama(vocab=vocab, d=d, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, d_ff=d_ff,
                     eps=eps)


def zero_init_outputs(model: nn.Module) -> nn.Module:
    """Zero every residual branch's last layer (``o_proj``, ``down_proj``, ``c_proj``), as the modded-nanogpt
    recipe and many others initialise: the branches start as the identity and their first layers get no gradient
    until the zeros have moved."""
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in ("o_proj", "down_proj", "c_proj"):
                mod.weight.zero_()
                if mod.bias is not None:
                    mod.bias.zero_()
    return model


class LoRALinear(nn.Module):
    """PEFT's LoRA layer: base(x) + (alpha / r) · B(A(x)), with A Kaiming-uniform, B = 0 and the base frozen."""

    def __init__(self, base: nn.Linear, r: int = 4, alpha: float = 8.0):
        super().__init__()
        self.base = base
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r
        for q in base.parameters():
            q.requires_grad_(False)

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling


def add_lora(model: nn.Module, targets=("q_proj", "v_proj"), r: int = 4, alpha: float = 8.0) -> nn.Module:
    """Freeze ``model`` and wrap every Linear whose name ends in one of ``targets`` with a :class:`LoRALinear`."""
    for q in model.parameters():
        q.requires_grad_(False)
    for name, mod in list(model.named_modules()):
        for child, sub in list(mod.named_children()):
            if isinstance(sub, nn.Linear) and child in targets:
                setattr(mod, child, LoRALinear(sub, r, alpha))
    return model


@dataclasses.dataclass
class Curve:
    steps: list[int]
    train: list[float]
    val: list[float]

    @property
    def final_val(self) -> float:
        return self.val[-1]


def train_char_lm(make_optimizer: Callable, steps: int = 200, batch: int = 16, seq: int = 64, seed: int = 0,
                  eval_every: int = 25, text: torch.Tensor | None = None, model=None, progress=None,
                  device: str = "cpu", eval_train: bool = False) -> Curve:
    """Train ``char_llama()`` (or ``model``) with ``make_optimizer(model, example_inputs)``; 90/10 split. The
    curve's train loss is the mean minibatch loss since the last evaluation, or with ``eval_train`` the loss on
    four fixed training batches, read like the validation loss."""
    data = char_corpus() if text is None else text
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    model = (char_llama() if model is None else model).to(device)
    gen = torch.Generator().manual_seed(seed)

    def batch_of(src, g):
        idx = torch.randint(0, len(src) - seq - 1, (batch,), generator=g)
        x = torch.stack([src[i:i + seq] for i in idx.tolist()])
        y = torch.stack([src[i + 1:i + seq + 1] for i in idx.tolist()])
        return x.to(device), y.to(device)

    def loss_of(x, y):
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))

    val_batches = [batch_of(val, torch.Generator().manual_seed(10_000 + i)) for i in range(4)]
    train_batches = [batch_of(train, torch.Generator().manual_seed(20_000 + i)) for i in range(4)]
    opt = make_optimizer(model, (batch_of(train, torch.Generator().manual_seed(99))[0],))
    curve = Curve([], [], [])
    window = []
    for step in range(1, steps + 1):
        x, y = batch_of(train, gen)
        opt.zero_grad(set_to_none=True)
        loss = loss_of(x, y)
        loss.backward()
        opt.step()
        window.append(float(loss.detach()))
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                v = sum(float(loss_of(*b)) for b in val_batches) / len(val_batches)
                t = sum(float(loss_of(*b)) for b in train_batches) / len(train_batches) if eval_train else \
                    sum(window) / len(window)
            curve.steps.append(step)
            curve.train.append(t)
            curve.val.append(v)
            window = []
            if progress is not None:
                progress(step, curve.train[-1], v)
    return curve


def teacher_classification(n_train: int = 2048, n_val: int = 1024, dim: int = 20, classes: int = 5, seed: int = 0):
    """Inputs N(0, I); labels argmax of a random two-layer teacher (learnable, not linearly separable)."""
    g = torch.Generator().manual_seed(seed)
    W1, W2 = torch.randn(64, dim, generator=g), torch.randn(classes, 64, generator=g)
    x = torch.randn(n_train + n_val, dim, generator=g)
    y = (torch.tanh(x @ W1.T) @ W2.T).argmax(-1)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def relu_classifier(dim: int = 20, hidden: int = 64, classes: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))


def train_classifier(make_optimizer: Callable, steps: int = 300, batch: int = 64, seed: int = 0) -> Curve:
    (xt, yt), (xv, yv) = teacher_classification()
    model = relu_classifier()
    opt = make_optimizer(model, (xt[:8],))
    gen = torch.Generator().manual_seed(seed)
    curve = Curve([], [], [])
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(xt), (batch,), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xt[idx]), yt[idx])
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps:
            with torch.no_grad():
                curve.steps.append(step)
                curve.train.append(float(F.cross_entropy(model(xt), yt)))
                curve.val.append(float(F.cross_entropy(model(xv), yv)))
    return curve


def adamw_factory(**hp) -> Callable:
    return lambda model, _inputs: torch.optim.AdamW(model.parameters(), **hp)


def float64_zoo(name: str):
    """A zoo model of the equivariance experiments (the 2-layer Llama-GQA at eps 1e-6 for "llama_gqa") and its inputs,
    in float64."""

    model, inputs = {"llama_gqa": lambda: zoo.llama_gqa(n_layers=2, eps=1e-6)}.get(name, zoo.ZOO[name])()
    return float64_twin(model, inputs, copy_model=False)


def label_batches(model, inputs, plan, n: int, seed: int = 5) -> list[torch.Tensor]:
    """``n`` batches of random class labels shaped like f's (all but its class axis), for ``run_from``."""

    with torch.no_grad():
        out = model_f(model, inputs, plan.loss, plan.f_leaves)
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, out.shape[-1], out.shape[:-1], generator=gen) for _ in range(n)]


def run_from(model, inputs, plan, batches, element, make_optimizer):
    """Train a copy of ``model`` moved by the group element ``element`` (None: not moved) on ``batches`` of labels
    with the negative log-likelihood of f; ``make_optimizer(model, bound_plan)``. Returns f after every step
    (stacked), the trained copy and its optimizer: the equivariance experiment of design section 6."""
    import copy


    m = copy.deepcopy(model)
    bound = plan.bind(m)
    if element is not None:
        bound.act(element)
    opt = make_optimizer(m, bound)
    trace = []
    for y in batches:
        opt.zero_grad()
        lp = model_f(m, inputs, plan.loss, plan.f_leaves)
        F.nll_loss(lp.reshape(-1, lp.shape[-1]), y.reshape(-1)).backward()
        opt.step()
        with torch.no_grad():
            trace.append(model_f(m, inputs, plan.loss, plan.f_leaves))
    return torch.stack(trace), m, opt


def worst_step_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over steps of max |a − b| / max |a| (two stacked trajectories of f)."""
    dims = tuple(range(1, a.dim()))
    return float(((a - b).abs().amax(dim=dims) / a.abs().amax(dim=dims)).max())


class MuonAdamW:
    """torch.optim.Muon on the hidden matrices and torch.optim.AdamW on the rest (the routing of
    :func:`gaugec.optim.muon_parameters`), stepped together: the baseline DDCMuon is compared with."""

    def __init__(self, model, plan, lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.1,
                 adjust_lr_fn=None, adamw_lr=3e-4, adamw_betas=(0.9, 0.95), adamw_eps=1e-8, adamw_weight_decay=None):

        names = muon_parameters(plan)
        hidden = [p for n, p in model.named_parameters() if n in names and p.requires_grad]
        rest = [p for n, p in model.named_parameters() if n not in names and p.requires_grad]
        self.muon = torch.optim.Muon(hidden, lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                     weight_decay=weight_decay, adjust_lr_fn=adjust_lr_fn)
        self.adamw = torch.optim.AdamW(rest, lr=adamw_lr, betas=adamw_betas, eps=adamw_eps,
                                       weight_decay=weight_decay if adamw_weight_decay is None else adamw_weight_decay)
        self.param_groups = self.muon.param_groups + self.adamw.param_groups

    def zero_grad(self, set_to_none: bool = True):
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss


def muon_factory(**hp) -> Callable:
    def make(model, inputs):

        return MuonAdamW(model, compile_plan(model, inputs, loss="cross_entropy"), **hp)

    return make


def ddcmuon_factory(**hp) -> Callable:
    def make(model, inputs):

        return DDCMuon(model.parameters(), compile_plan(model, inputs, loss="cross_entropy"), **hp)

    return make


def ddcadam_factory(**hp) -> Callable:
    def make(model, inputs):

        plan = compile_plan(model, inputs, loss="cross_entropy")
        return DDCAdam(model.parameters(), plan, **hp)

    return make
