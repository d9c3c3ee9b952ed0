"""Random small architectures from a grammar: every reported generator must pass the oracle's soundness check.

A false gauge is the worst bug this tool can have, so the fuzz asserts both that no gauge was rejected by the
numeric check (discovery never proposed a false one) and that the oracle finds ‖Jξ‖/(‖J‖‖ξ‖) at rounding level.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import gaugec
from gaugec.zoo import RMSNorm, Rotary

ACTS = {"relu": F.relu, "leaky": lambda x: F.leaky_relu(x, 0.2), "gelu": F.gelu, "silu": F.silu}


class Attn(nn.Module):
    def __init__(self, d, heads, kv_heads, rope, bias, fused=False):
        super().__init__()
        self.h, self.hkv, self.dh = heads, kv_heads, d // heads
        self.fused = fused
        if fused:   # GPT-2 style: one projection, split into q, k, v
            self.qkv = nn.Linear(d, (heads + 2 * kv_heads) * self.dh, bias=bias)
        else:
            self.q = nn.Linear(d, heads * self.dh, bias=bias)
            self.k = nn.Linear(d, kv_heads * self.dh, bias=bias)
            self.v = nn.Linear(d, kv_heads * self.dh, bias=bias)
        self.o = nn.Linear(heads * self.dh, d, bias=bias)
        self.rot = Rotary(self.dh) if rope else None

    def forward(self, x):
        B, T, _ = x.shape
        if self.fused:
            q, k, v = self.qkv(x).split([self.h * self.dh, self.hkv * self.dh, self.hkv * self.dh], dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q = q.view(B, T, self.h, self.dh).transpose(1, 2)
        k = k.view(B, T, self.hkv, self.dh).transpose(1, 2)
        v = v.view(B, T, self.hkv, self.dh).transpose(1, 2)
        if self.rot is not None:
            pos = torch.arange(T)
            q, k = self.rot(q, pos), self.rot(k, pos)
        rep = self.h // self.hkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.dh)
        att = att.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float("-inf")).softmax(-1)
        return self.o((att @ v).transpose(1, 2).reshape(B, T, self.h * self.dh))


class GLU(nn.Module):
    def __init__(self, d, h, act, bias):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(d, h, bias=bias), nn.Linear(d, h, bias=bias), nn.Linear(h, d)
        self.act = ACTS[act]

    def forward(self, x):
        return self.down(self.act(self.gate(x)) * self.up(x))


class MLP(nn.Module):
    def __init__(self, d, h, act, bias):
        super().__init__()
        self.a, self.b = nn.Linear(d, h, bias=bias), nn.Linear(h, d, bias=bias)
        self.act = ACTS[act]

    def forward(self, x):
        return self.b(self.act(self.a(x)))


class Net(nn.Module):
    def __init__(self, spec, vocab, d, tie, positions=0, final="none"):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(positions, d) if positions else None     # a learned position table, summed
        self.layers = nn.ModuleList()
        self.residual = []
        for kind, args, residual in spec:
            norm = {"ln": lambda: nn.LayerNorm(d), "ln_nobias": lambda: nn.LayerNorm(d, bias=False),
                    "rms": lambda: RMSNorm(d, eps=0.0), "none": nn.Identity}[args["norm"]]()
            body = {"attn": lambda: Attn(d, args["heads"], args["kv"], args["rope"], args["bias"], args["fused"]),
                    "glu": lambda: GLU(d, args["h"], args["act"], args["bias"]),
                    "mlp": lambda: MLP(d, args["h"], args["act"], args["bias"])}[kind]()
            self.layers.append(nn.Sequential(norm, body))
            self.residual.append(residual)
        # a final norm before the head (eps 0: the stream scale reaches a tied head through its gain)
        self.final = {"none": nn.Identity(), "rms": RMSNorm(d, eps=0.0), "ln": nn.LayerNorm(d, eps=0.0)}[final]
        self.head = nn.Linear(d, vocab, bias=not tie)
        if tie:
            self.head.weight = self.emb.weight

    def forward(self, ids):
        x = self.emb(ids)
        if self.pos is not None:
            x = x + self.pos(torch.arange(ids.shape[1]))
        for layer, res in zip(self.layers, self.residual):
            x = x + layer(x) if res else layer(x)
        return self.head(self.final(x))


@st.composite
def architectures(draw):
    d = 8
    spec = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["attn", "glu", "mlp"]))
        args = {"norm": draw(st.sampled_from(["ln", "ln_nobias", "rms", "none"])), "bias": draw(st.booleans())}
        if kind == "attn":
            args["heads"] = draw(st.sampled_from([2, 4]))
            args["kv"] = draw(st.sampled_from([h for h in (1, 2, 4) if args["heads"] % h == 0]))
            args["rope"] = draw(st.booleans())
            args["fused"] = draw(st.booleans())
        else:
            args["h"] = draw(st.sampled_from([4, 6]))
            args["act"] = draw(st.sampled_from(list(ACTS)))
        spec.append((kind, args, draw(st.booleans())))
    return (spec, draw(st.booleans()), draw(st.sampled_from(["cross_entropy", None])), draw(st.sampled_from([0, 5])),
            draw(st.sampled_from(["none", "rms", "ln"])))


class ConvNet(nn.Module):
    """Conv2d (bias or not) → [BatchNorm2d in eval mode, running statistics away from (0, 1)] → activation →
    [max-pool], repeated; global average pool → Linear."""

    def __init__(self, spec, classes=3):
        super().__init__()
        self.blocks = nn.ModuleList()
        c, gen = 2, torch.Generator().manual_seed(1)
        for width, bias, bn, act, pool in spec:
            layers = [nn.Conv2d(c, width, 3, padding=1, bias=bias)]
            if bn:
                norm = nn.BatchNorm2d(width)
                norm.running_mean.copy_(torch.randn(width, generator=gen))
                norm.running_var.copy_(torch.rand(width, generator=gen) + 0.5)
                layers.append(norm)
            layers.append(nn.Identity() if act == "none" else nn.ReLU() if act == "relu" else nn.GELU())
            if pool:
                layers.append(nn.MaxPool2d(2))
            self.blocks.append(nn.Sequential(*layers))
            c = width
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x.mean((2, 3)))


@st.composite
def conv_architectures(draw):
    spec = [(draw(st.sampled_from([3, 4])), draw(st.booleans()), draw(st.booleans()),
             draw(st.sampled_from(["relu", "gelu", "none"])), draw(st.booleans())) for _ in range(draw(st.integers(1, 2)))]
    return spec, draw(st.sampled_from(["cross_entropy", None]))


def _check_sound(model, inputs, loss):
    plan = gaugec.compile(model, inputs, loss=loss)
    assert not plan.rejected, [(g.name, g.numeric_residual, g.proof.status) for g in plan.rejected]
    rep = gaugec.verify(model, inputs, plan, soundness_only=True)
    assert rep.sound, {k: v for k, v in rep.soundness.items() if v > 1e-8}


def check_token_architecture(arch):
    spec, tie, loss, positions, final = arch
    torch.manual_seed(0)
    model = Net(spec, vocab=10, d=8, tie=tie, positions=positions, final=final)
    inputs = (torch.randint(0, 10, (2, 5), generator=torch.Generator().manual_seed(0)),)
    with torch.no_grad():
        assume(bool(torch.isfinite(model(*inputs)).all()))   # e.g. RMSNorm at eps 0 on an all-zero ReLU output
    _check_sound(model, inputs, loss)


def check_conv_architecture(arch):
    spec, loss = arch
    torch.manual_seed(0)
    model = ConvNet(spec).eval()
    _check_sound(model, (torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(0)),), loss)


SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.data_too_large])


@settings(max_examples=25, **SETTINGS)
@given(architectures())
def test_random_architectures_are_sound(arch):
    check_token_architecture(arch)


@settings(max_examples=10, **SETTINGS)
@given(conv_architectures())
def test_random_conv_nets_are_sound(arch):
    check_conv_architecture(arch)


@pytest.mark.slow
@settings(max_examples=200, **SETTINGS)
@given(architectures())
def test_200_random_architectures_are_sound(arch):
    check_token_architecture(arch)


@pytest.mark.slow
@settings(max_examples=60, **SETTINGS)
@given(conv_architectures())
def test_60_random_conv_nets_are_sound(arch):
    check_conv_architecture(arch)
