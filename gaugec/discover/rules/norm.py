"""Normalisation layers: gains are diagonal gauges; LayerNorm absorbs translations along its normalised axes.

* LayerNorm / RMSNorm / BatchNorm (eval) affine outputs g ⊙ n + b seed a diagonal gauge: g_i <- c_i g_i,
  b_i <- c_i b_i, column i of every reader / c_i (``norm_gain``; sign allowed).
* The normalised input of a LayerNorm is centred, so a translation along the all-ones direction of its normalised
  axes is absorbed (``layernorm_shift``); the bias b seeds a translation that a reader's bias can absorb.
* A scaling of the input is a gauge only at eps = 0 (``rmsnorm_scale``: the exact breaking term for eps > 0 is
  part of the lemma); it and the residual-stream rotations are the next family to derive, so a multiplicative
  probe stops at a norm.
"""
from __future__ import annotations

import numpy as np
import sympy as sp

from gaugec.discover.fx import arg, node_shape
from gaugec.discover.registry import rule
from gaugec.plan.gauge import Leg
from gaugec.prove.lemmas import lemma


@lemma("layernorm_shift", "LN(x + s 1) = LN(x): centring removes a translation along the ones direction")
def _ln_shift():
    xs = sp.symbols("x0:3", real=True)
    s = sp.Symbol("s", real=True)
    eps = sp.Symbol("e", positive=True)

    def ln(v):
        m = sum(v) / 3
        var = sum((vi - m) ** 2 for vi in v) / 3
        return [(vi - m) / sp.sqrt(var + eps) for vi in v]

    return [a - b for a, b in zip(ln([x + s for x in xs]), ln(list(xs)))]


@lemma("rmsnorm_scale", "rms(c x) with eps: c x / sqrt(c^2 m + e) - x / sqrt(m + e/c^2) = 0, so scale "
       "invariance is exact iff e = 0 (the breaking term is e/c^2 - e)")
def _rms_scale():
    x, m = sp.symbols("x m", positive=True)
    c, e = sp.symbols("c e", positive=True)
    exact = c * x / sp.sqrt(c ** 2 * m) - x / sp.sqrt(m)
    breaking = c * x / sp.sqrt(c ** 2 * m + e) - x / sp.sqrt(m + e / c ** 2)
    return [exact, breaking]


def _normalised_axes(node, shape, nshape_arg):
    k = len(nshape_arg)
    return list(range(len(shape) - k, len(shape)))


def _seed_affine(sc, node, axes, w, b, what):
    shape = node_shape(node)
    pvw, pvb = sc.param_view(w), sc.param_view(b)
    if shape is None or pvw is None:
        return
    sub = [shape[a] for a in axes]
    n = int(np.prod(sub, dtype=np.int64))
    C = np.arange(n).reshape([shape[a] if a in axes else 1 for a in range(len(shape))])
    C = np.broadcast_to(C, shape)
    legs = []
    if pvw.ndim == 1 and pvw.shape[0] == n:
        legs.append(Leg(pvw.param, "gain", axis=0, coords=np.arange(n), offset=pvw.offset))
    else:
        return
    if pvb is not None and pvb.ndim == 1 and pvb.shape[0] == n:
        legs.append(Leg(pvb.param, "out", axis=0, coords=np.arange(n)))
    sc.probe("mult", "diag", C, legs, coord_kind="scalar", describe=f"gain of {what} {node.name}",
             tags=("norm_gain",), cites=("norm_gain", "offset_gain") if pvw.offset else ("norm_gain",))
    if pvb is not None and pvb.ndim == 1 and pvb.shape[0] == n:
        sc.probe("add", "translation", C.copy(), [Leg(pvb.param, "shift", axes=())],
                 describe=f"translation of the bias of {what} {node.name}", cites=("additive_passthrough",))


@rule("layer_norm", kind="seed")
def seed_layer_norm(sc, node):
    shape = node_shape(node)
    axes = _normalised_axes(node, shape, arg(node, 1, "normalized_shape"))
    _seed_affine(sc, node, axes, arg(node, 2, "weight"), arg(node, 3, "bias"), "layer norm")


@rule("rms_norm", kind="seed")
def seed_rms_norm(sc, node):
    shape = node_shape(node)
    axes = _normalised_axes(node, shape, arg(node, 1, "normalized_shape"))
    _seed_affine(sc, node, axes, arg(node, 2, "weight"), None, "RMS norm")


@rule("batch_norm", "_native_batch_norm_legit_no_training", kind="seed")
def seed_batch_norm(sc, node):
    name = node.target._schema.name.split("::")[-1]
    if name == "batch_norm" and arg(node, 5, "training", False):
        return
    _seed_affine(sc, node, [1], arg(node, 1, "weight"), arg(node, 2, "bias"), "batch norm")


@rule("layer_norm", kind="add")
def layer_norm_add(ctx, node):
    L = ctx.state(arg(node, 0, "input"))
    if L is None:
        return ctx.kill_all("a translation of a layer norm's gain or bias")
    axes = _normalised_axes(node, L.shape, arg(node, 1, "normalized_shape"))
    flat = np.moveaxis(L, axes, list(range(L.ndim - len(axes), L.ndim))).reshape(-1, int(np.prod([L.shape[a] for a in axes])))
    if np.all(flat == flat[:, :1]):
        ctx.cite("layernorm_shift")
        ctx.sink("layer_norm")
        ctx.tag("norm_input_shift")
        return None
    return ctx.kill_all("a translation that is not constant along the layer norm's axes")


@rule("rms_norm", "batch_norm", "_native_batch_norm_legit_no_training", "group_norm", kind="add")
def other_norm_add(ctx, node):
    return ctx.kill_all("a translation entering a norm that does not centre its input")
