"""Attention: scaled dot-product attention, softmax, and the translations softmax absorbs.

* Q/K: scores = q k^T contracts the head axis, so a map A on q pairs with A^-T on k (``bilinear_contract``), per
  head; under GQA the key head is repeated, so every query head of a group shares its KV head's map.
* V/O: out = softmax(scores) v acts on v's token axis only, so a map B on v's head features passes to the output
  (``matmul_free_axis``) and the output projection's columns absorb it.
* softmax(z + s 1) = softmax(z) (``softmax_shift``): a key bias is a translation gauge (q (k_j + t) = q k_j + q t,
  constant over keys j), and a value bias passes through rows that sum to one (``value_bias_rows``) to the output
  bias.
"""
from __future__ import annotations

import numpy as np
import sympy as sp

from gaugec.discover.fx import arg, node_shape, norm_dim, varying_axes
from gaugec.discover.registry import barrier, rule
from gaugec.prove.lemmas import lemma


@lemma("softmax_shift", "softmax(z + s 1) = softmax(z) and log_softmax(z + s 1) = log_softmax(z)")
def _softmax_shift():
    z = sp.symbols("z0:3", real=True)
    s = sp.Symbol("s", real=True)
    den = sum(sp.exp(zi) for zi in z)
    den_s = sum(sp.exp(zi + s) for zi in z)
    soft = [sp.exp(zi + s) / den_s - sp.exp(zi) / den for zi in z]
    logsoft = [sp.expand_log((zi + s) - sp.log(den_s) - (zi - sp.log(den)), force=True) for zi in z]
    # log(sum exp(z + s)) = s + log(sum exp z)
    logsoft = [e.subs(sp.log(den_s), s + sp.log(den)) for e in logsoft]
    return soft + logsoft


@lemma("key_bias_shift", "q . (k_j + t) = q . k_j + q . t, the same for every key j: a softmax over keys absorbs it")
def _key_bias():
    q, k, t = (sp.Matrix(sp.symbols(f"{n}0:2")) for n in "qkt")
    return [(q.T * (k + t))[0] - (q.T * k)[0] - (q.T * t)[0]]


@lemma("value_bias_rows", "sum_j a_ij (v_j + t) = sum_j a_ij v_j + t when sum_j a_ij = 1")
def _value_bias():
    a0, a1, v0, v1, t = sp.symbols("a0 a1 v0 v1 t")
    lhs = a0 * (v0 + t) + (1 - a0) * (v1 + t)
    return [lhs - (a0 * v0 + (1 - a0) * v1) - t]


barrier("softmax is not equivariant under a linear map of its input", "softmax", "_softmax", "log_softmax",
        "_log_softmax")


def _heads_to(C, hq, head_axis):
    """Repeat a KV head axis up to hq query heads (GQA: query head h uses KV head h // group)."""
    hk = C.shape[head_axis]
    if hk == hq or hk == 1:
        return C
    return np.repeat(C, hq // hk, axis=head_axis)


@rule("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu", kind="mult")
def sdpa_mult(ctx, node):
    q, k, v = node.args[0], node.args[1], node.args[2]
    mask = arg(node, 3, "attn_mask")
    if ctx.state(mask) is not None:
        ctx.kill(ctx.state(mask), "the group reaches an attention mask")
    sq, so = node_shape(q), node_shape(node)
    hq = sq[-3] if len(sq) >= 3 else 1
    out = None
    for role, x in (("q", q), ("k", k), ("v", v)):
        C = ctx.state(x)
        if C is None:
            continue
        tok = C.ndim - 2
        if tok in varying_axes(C):
            ctx.kill(C, f"the group acts on the token axis of attention {role}")
            continue
        ctx.fibres(C, [-1])
        if role in ("q", "k"):
            Ch = np.take(C, 0, axis=tok)
            if role == "k" and Ch.ndim >= 2:
                Ch = _heads_to(Ch, hq, Ch.ndim - 2)
            ctx.half_edge("a" if role == "q" else "b", Ch)
            ctx.cite("bilinear_contract")
            ctx.tag("attn_qk", C)
        else:
            Ch = np.take(C, 0, axis=tok)
            if Ch.ndim >= 2:
                Ch = _heads_to(Ch, hq, Ch.ndim - 2)
            res = np.expand_dims(Ch, -2)
            res = np.broadcast_to(res.reshape((1,) * (len(so) - res.ndim) + res.shape), so)
            ctx.cite("matmul_free_axis")
            ctx.tag("attn_vo", C)
            out = res
    return out


@rule("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu", kind="add")
def sdpa_add(ctx, node):
    q, k, v = node.args[0], node.args[1], node.args[2]
    so = node_shape(node)
    hq = node_shape(q)[-3] if len(node_shape(q)) >= 3 else 1
    if ctx.state(q) is not None or ctx.state(arg(node, 3, "attn_mask")) is not None:
        return ctx.kill_all("a translation of the queries or the mask changes the scores")
    out = None
    for role, x in (("k", k), ("v", v)):
        L = ctx.state(x)
        if L is None:
            continue
        if (L.ndim - 2) in varying_axes(L):
            return ctx.kill_all(f"a translation of attention {role} that varies over tokens")
        if role == "k":
            ctx.cite("key_bias_shift")
            ctx.cite("softmax_shift")
            ctx.sink("attention softmax (key translation)")
            ctx.tag("key_translation")
        else:
            Lh = np.take(L, 0, axis=L.ndim - 2)
            if Lh.ndim >= 2:
                Lh = _heads_to(Lh, hq, Lh.ndim - 2)
            res = np.expand_dims(Lh, -2)
            out = np.broadcast_to(res.reshape((1,) * (len(so) - res.ndim) + res.shape), so)
            ctx.cite("value_bias_rows")
            ctx.tag("attn_value_translation")
    return out


@rule("masked_fill", kind="add")
def masked_fill_add(ctx, node):
    """Filling with -inf (attention masks): -inf + d = -inf, so a translation passes unchanged."""
    x, mask, value = node.args[0], node.args[1], node.args[2]
    if ctx.state(mask) is not None or ctx.state(x) is None:
        return ctx.kill_all("a translation reaching a mask")
    if isinstance(value, float) and value == float("-inf"):
        ctx.cite("additive_passthrough")
        return ctx.state(x)
    return ctx.kill_all("masked_fill with a finite value replaces the translated entries")


@rule("softmax", "_softmax", "log_softmax", "_log_softmax", kind="add")
def softmax_add(ctx, node):
    L = ctx.state(node.args[0])
    dim = norm_dim(arg(node, 1, "dim"), L.ndim)
    if dim not in varying_axes(L):
        ctx.cite("softmax_shift")
        ctx.sink("softmax")
        return None
    return ctx.kill_all("a translation that varies along the softmax axis")
