"""Built-in tiny models (pure PyTorch) for the CLI, the demo and the tests.

Every factory returns ``(model, example_inputs)``. The decoders are written the way their families are usually
written (hand-written RMSNorm with pow/mean/rsqrt, rotate_half RoPE, repeat_kv GQA, fused GPT-2 QKV), so the
discovery rules see the graphs users hand them, not a simplified form.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """x / rms(x) * w, or * (1 + w) with ``offset_gain`` (Gemma)."""

    def __init__(self, d: int, eps: float = 1e-6, offset_gain: bool = False):
        super().__init__()
        self.offset_gain = offset_gain
        self.weight = nn.Parameter(torch.zeros(d) if offset_gain else torch.ones(d))
        self.eps = eps

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(var + self.eps)
        return x * (1.0 + self.weight) if self.offset_gain else self.weight * x


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rotate_interleaved(x):
    return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)


def rotate_complex(x, freqs):
    """Llama-4 style: each (even, odd) pair is a complex number, multiplied by exp(i freqs)."""
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(z * torch.polar(torch.ones_like(freqs), freqs)).flatten(-2)


class Rotary(nn.Module):
    """Rotary embedding of the first ``dim`` features; ``style`` is how the pairs are written: "half" (rotate_half,
    Llama), "interleaved" (rotate-every-two, GPT-J) or "complex" (view_as_complex, Llama-4)."""

    def __init__(self, dim: int, base: float = 10000.0, style: str = "half"):
        super().__init__()
        if style not in ("half", "interleaved", "complex"):
            raise ValueError(f"unknown rotary style {style!r}")
        self.dim = dim
        self.style = style
        self.register_buffer("inv_freq", 1.0 / base ** (torch.arange(0, dim, 2).float() / dim), persistent=False)

    def forward(self, x, positions):
        freqs = positions[:, None].to(self.inv_freq.dtype) * self.inv_freq[None, :]
        if self.style == "complex":
            if self.dim == x.shape[-1]:
                return rotate_complex(x, freqs.to(x.dtype))
            return torch.cat((rotate_complex(x[..., :self.dim], freqs.to(x.dtype)), x[..., self.dim:]), dim=-1)
        if self.style == "interleaved":
            emb = torch.repeat_interleave(freqs, 2, dim=-1)
            rot = rotate_interleaved
        else:
            emb = torch.cat((freqs, freqs), dim=-1)
            rot = rotate_half
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        r = self.dim
        if r == x.shape[-1]:
            return x * cos + rot(x) * sin
        x_rot, x_pass = x[..., :r], x[..., r:]
        return torch.cat((x_rot * cos + rot(x_rot) * sin, x_pass), dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self, d, n_heads, n_kv_heads, bias=False, rope=True, partial_rotary=1.0, rope_style="half",
                 qk_norm=False, eps=1e-6):
        super().__init__()
        self.h, self.hkv, self.dh = n_heads, n_kv_heads, d // n_heads
        # QK-norm (Qwen3 / Gemma 3 style): an RMSNorm over d_head on every query and key head, before RoPE
        self.q_norm = RMSNorm(self.dh, eps) if qk_norm else None
        self.k_norm = RMSNorm(self.dh, eps) if qk_norm else None
        self.q_proj = nn.Linear(d, n_heads * self.dh, bias=bias)
        self.k_proj = nn.Linear(d, n_kv_heads * self.dh, bias=bias)
        self.v_proj = nn.Linear(d, n_kv_heads * self.dh, bias=bias)
        self.o_proj = nn.Linear(n_heads * self.dh, d, bias=False)
        rot_dim = int(self.dh * partial_rotary) // 2 * 2
        self.rotary = Rotary(rot_dim, style=rope_style) if rope and rot_dim else None

    def forward(self, x):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.dh)
        k = self.k_proj(x).view(B, T, self.hkv, self.dh)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.hkv, self.dh).transpose(1, 2)
        if self.rotary is not None:
            pos = torch.arange(T, device=x.device)
            q, k = self.rotary(q, pos), self.rotary(k, pos)
        rep = self.h // self.hkv
        if rep > 1:  # repeat_kv, as Hugging Face writes it
            k = k[:, :, None, :, :].expand(B, self.hkv, rep, T, self.dh).reshape(B, self.h, T, self.dh)
            v = v[:, :, None, :, :].expand(B, self.hkv, rep, T, self.dh).reshape(B, self.h, T, self.dh)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.h * self.dh))


class SwiGLU(nn.Module):
    def __init__(self, d, d_ff, act="silu"):
        super().__init__()
        self.gate_proj = nn.Linear(d, d_ff, bias=False)
        self.up_proj = nn.Linear(d, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d, bias=False)
        self.act = F.silu if act == "silu" else F.gelu

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    def __init__(self, d, n_heads, n_kv_heads, d_ff, eps, **kw):
        super().__init__()
        offset = kw.pop("offset_gain", False)
        self.input_layernorm = RMSNorm(d, eps, offset)
        self.self_attn = LlamaAttention(d, n_heads, n_kv_heads, eps=eps, **kw)
        self.post_attention_layernorm = RMSNorm(d, eps, offset)
        self.mlp = SwiGLU(d, d_ff)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class TinyLlama(nn.Module):
    """Llama-style decoder: RMSNorm, RoPE, GQA (repeat_kv), SwiGLU, optional tied head / biases / Gemma gains."""

    def __init__(self, vocab=16, d=8, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=12, eps=1e-6, tie=False,
                 bias=False, rope=True, partial_rotary=1.0, rope_style="half", offset_gain=False, qk_norm=False):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(
            LlamaBlock(d, n_heads, n_kv_heads, d_ff, eps, bias=bias, rope=rope, partial_rotary=partial_rotary,
                       rope_style=rope_style, offset_gain=offset_gain, qk_norm=qk_norm) for _ in range(n_layers))
        self.norm = RMSNorm(d, eps, offset_gain)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, ids):
        h = self.embed_tokens(ids)
        for layer in self.layers:
            h = layer(h)
        return self.lm_head(self.norm(h))


class GPT2Block(nn.Module):
    def __init__(self, d, n_heads):
        super().__init__()
        self.h, self.dh = n_heads, d // n_heads
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(D, dim=2)
        q = q.view(B, T, self.h, self.dh).transpose(1, 2)
        k = k.view(B, T, self.h, self.dh).transpose(1, 2)
        v = v.view(B, T, self.h, self.dh).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.dh))
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device))
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, D)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class TinyGPT2(nn.Module):
    """GPT-2-style decoder: learned positions, LayerNorm, fused QKV with biases, GELU MLP, tied head by default."""

    def __init__(self, vocab=16, d=8, n_layers=1, n_heads=2, n_pos=8, tie=True):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(n_pos, d)
        self.blocks = nn.ModuleList(GPT2Block(d, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.wte.weight

    def forward(self, ids):
        T = ids.shape[1]
        h = self.wte(ids) + self.wpe(torch.arange(T, device=ids.device))
        for b in self.blocks:
            h = b(h)
        return self.lm_head(self.ln_f(h))


class PostLNBlock(nn.Module):
    """A BERT-style (post-LN) encoder block: x <- LN(x + O(attn(x))), x <- LN(x + down(gelu(up(x))))."""

    def __init__(self, d, n_heads, d_ff, eps):
        super().__init__()
        self.h, self.dh = n_heads, d // n_heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln_attn = nn.LayerNorm(d, eps=eps)
        self.up, self.down = nn.Linear(d, d_ff), nn.Linear(d_ff, d)
        self.ln_mlp = nn.LayerNorm(d, eps=eps)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = ((f(x).view(B, T, self.h, self.dh).transpose(1, 2)) for f in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, D)
        x = self.ln_attn(x + self.o(y))
        return self.ln_mlp(x + self.down(F.gelu(self.up(x))))


class TinyPostLN(nn.Module):
    """A BERT-style encoder: token and position tables summed into a LayerNorm, post-LN blocks, and a head with a
    bias, tied to the token table by default (BERT's MLM decoder)."""

    def __init__(self, vocab=16, d=8, n_layers=1, n_heads=2, d_ff=6, n_pos=6, eps=0.0, tie=True):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(n_pos, d)
        self.ln_emb = nn.LayerNorm(d, eps=eps)
        self.blocks = nn.ModuleList(PostLNBlock(d, n_heads, d_ff, eps) for _ in range(n_layers))
        self.head = nn.Linear(d, vocab)
        if tie:
            self.head.weight = self.tok.weight

    def forward(self, ids):
        h = self.ln_emb(self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device)))
        for b in self.blocks:
            h = b(h)
        return self.head(h)


class ConvNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.adaptive_avg_pool2d(F.relu(self.conv2(x)), 1).flatten(1)
        return self.fc(x)


def _seq(*mods):
    return nn.Sequential(*mods)


def _tokens(vocab=16, batch=2, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, vocab, (batch, T), generator=g),)


def _floats(*shape, seed=0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)),)


def deep_linear_bridge(L: int = 3, d: int = 6, r: int = 1, t: float = 0.1):
    """The deep-linear bridge of docs/measure.md: every layer diag(1, ..., 1, t, ..., t), r dead coordinates."""
    net = nn.Sequential(*[nn.Linear(d, d, bias=False) for _ in range(L)]).double()
    diag = torch.ones(d, dtype=torch.float64)
    diag[d - r:] = t
    with torch.no_grad():
        for lin in net:
            lin.weight.copy_(torch.diag(diag))
    return net


def relu_mlp():
    """Linear(4,6) → ReLU → Linear(6,5) → LeakyReLU → Linear(5,3)."""
    torch.manual_seed(0)
    return _seq(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.LeakyReLU(0.1), nn.Linear(5, 3)), _floats(4, 4)


def gelu_mlp():
    """Linear(4,6) → GELU → Linear(6,3): GELU is a barrier, no rescale."""
    torch.manual_seed(0)
    return _seq(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 3)), _floats(4, 4)


def ln_mlp():
    """Linear(4,6) → LayerNorm(6, eps=0) → Linear(6,3): the design's 31-dimensional example."""
    torch.manual_seed(0)
    return _seq(nn.Linear(4, 6), nn.LayerNorm(6, eps=0.0), nn.Linear(6, 3)), _floats(4, 4)


def llama(**kw):
    """1-layer Llama-style decoder: d 8, 2 heads, 2 KV heads, d_ff 12, vocab 16 (the design's 113 example at eps 0)."""
    torch.manual_seed(0)
    cfg = dict(vocab=16, d=8, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=12, eps=0.0)
    cfg.update(kw)
    return TinyLlama(**cfg), _tokens(cfg["vocab"])


def llama_gqa(**kw):
    """Llama-style decoder with GQA: 4 query heads over 2 KV heads, d 16, vocab 32 (a head no wider than the stream,
    V - 1 < d once the softmax's shift is taken out, has extra kernel directions that are no gauge family)."""
    kw = {"d": 16, "n_heads": 4, "n_kv_heads": 2, "d_ff": 12, "vocab": 32, **kw}
    return llama(**kw)


def gpt2(**kw):
    """1-layer GPT-2-style decoder, d 8, 2 heads, tied head."""
    torch.manual_seed(0)
    cfg = dict(vocab=16, d=8, n_layers=1, n_heads=2, n_pos=8)
    cfg.update(kw)
    return TinyGPT2(**cfg), _tokens(cfg["vocab"], T=cfg["n_pos"])


def post_ln(**kw):
    """1-layer BERT-style (post-LN) encoder, d 8, 2 heads, eps 0, head with a bias tied to the token table."""
    torch.manual_seed(0)
    cfg = dict(vocab=16, d=8, n_layers=1, n_heads=2, d_ff=6, n_pos=6)
    cfg.update(kw)
    return TinyPostLN(**cfg), _tokens(cfg["vocab"], T=cfg["n_pos"])


def convnet():
    """Conv2d → BatchNorm2d (eval) → ReLU → MaxPool → Conv2d → ReLU → AvgPool → Linear."""
    torch.manual_seed(0)
    m = ConvNet()
    m.eval()
    return m, _floats(2, 3, 10, 10)


class StackedExperts(nn.Module):
    """A dense mixture of ReLU experts whose weights are stacked in 3-D tensors (as Hugging Face stores experts):
    p = softmax(router(x)); y = Σ_e p_e · W2[e] relu(W1[e] x + b1[e])."""

    def __init__(self, d_in: int = 4, hidden: int = 5, n_experts: int = 3, d_out: int = 3):
        super().__init__()
        self.router = nn.Linear(d_in, n_experts)
        self.w1 = nn.Parameter(torch.randn(n_experts, hidden, d_in) / d_in ** 0.5)
        self.b1 = nn.Parameter(torch.randn(n_experts, hidden) * 0.1)
        self.w2 = nn.Parameter(torch.randn(n_experts, d_out, hidden) / hidden ** 0.5)

    def forward(self, x):
        p = torch.softmax(self.router(x), dim=-1)
        y = None
        for e in range(self.w1.shape[0]):
            part = p[..., e:e + 1] * F.linear(torch.relu(F.linear(x, self.w1[e], self.b1[e])), self.w2[e])
            y = part if y is None else y + part
        return y


def moe_mlp():
    """Three ReLU experts in stacked weights behind a softmax router (each expert's rescale acts on its slice)."""
    torch.manual_seed(0)
    return StackedExperts(), _floats(8, 4)


ZOO = {
    "relu_mlp": relu_mlp,
    "gelu_mlp": gelu_mlp,
    "ln_mlp": ln_mlp,
    "llama": llama,
    "llama_gqa": llama_gqa,
    "gpt2": gpt2,
    "post_ln": post_ln,
    "convnet": convnet,
    "moe_mlp": moe_mlp,
}


def load(name: str):
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(sorted(ZOO))}")
    return ZOO[name]()
