"""Reductions and pooling.

A reduction over axes the action does not touch passes it (``scalar_commute`` per fibre); over an acted axis it is a
barrier. Average pooling is linear in the spatial axes and passes any channel map (``matmul_free_axis``); max
pooling passes positive channel scalings (``maxpool_pos``).
"""
from __future__ import annotations

import numpy as np
import sympy as sp

from gaugec.discover.fx import arg, node_shape, norm_dim, varying_axes
from gaugec.discover.registry import rule
from gaugec.discover.state import row_classes
from gaugec.prove.lemmas import lemma


@lemma("maxpool_pos", "max(c a, c b) = c max(a, b) for c > 0")
def _maxpool():
    b = sp.Symbol("b", real=True)
    c, u = sp.symbols("c u", positive=True)
    # the two orderings a = b + u and a = b - u (u > 0), and a = b
    return [sp.Max(c * a, c * b) - c * sp.Max(a, b) for a in (b + u, b - u, b)]


def _reduced_axes(node, ndim):
    dims = arg(node, 1, "dim", None)
    if dims is None:
        return list(range(ndim))
    if isinstance(dims, int):
        dims = [dims]
    return sorted(norm_dim(d, ndim) for d in dims)


def _reduce(a, axes, out_shape):
    r = a
    for ax in sorted(axes, reverse=True):
        r = np.take(r, [0], axis=ax)
    return r.reshape(out_shape)


@rule("mean", "sum", kind="mult")
def reduce_mult(ctx, node):
    C = ctx.state(node.args[0])
    axes = _reduced_axes(node, C.ndim)
    if set(axes) & varying_axes(C):
        return ctx.kill_all("a reduction over the acted axis")
    ctx.cite("scalar_commute")
    return _reduce(C, axes, node_shape(node))


@rule("mean", "sum", kind="add")
def reduce_add(ctx, node):
    L = ctx.state(node.args[0])
    axes = _reduced_axes(node, L.ndim)
    ctx.cite("additive_passthrough")
    name = node.target._schema.name.split("::")[-1]
    if not (set(axes) & varying_axes(L)):
        r = _reduce(L, axes, node_shape(node))
        return r if name == "mean" else ctx.fresh(r)
    moved = np.moveaxis(L, axes, list(range(L.ndim - len(axes), L.ndim)))
    rows = moved.reshape(moved.shape[: L.ndim - len(axes)] + (-1,))
    flat = rows.reshape(-1, rows.shape[-1])
    cls = row_classes(flat)
    out = ctx.fresh(cls.reshape(rows.shape[:-1]))
    return out.reshape(node_shape(node))


def _pool_mult(ctx, node, positive: bool):
    C = ctx.state(node.args[0])
    if varying_axes(C) - {1}:
        return ctx.kill_all("pooling a tensor acted on along spatial axes")
    if positive:
        ctx.restrict(C, "pos")
        ctx.cite("maxpool_pos")
    else:
        ctx.cite("matmul_free_axis")
    so = node_shape(node)
    base = C[(slice(None), slice(None)) + (0,) * (C.ndim - 2)]
    return np.broadcast_to(base.reshape(base.shape + (1,) * (len(so) - 2)), so)


@rule("avg_pool2d", "adaptive_avg_pool2d", "avg_pool1d", "adaptive_avg_pool1d", "_adaptive_avg_pool2d", kind="mult")
def avgpool_mult(ctx, node):
    return _pool_mult(ctx, node, positive=False)


@rule("max_pool2d", "max_pool1d", "adaptive_max_pool2d", kind="mult")
def maxpool_mult(ctx, node):
    return _pool_mult(ctx, node, positive=True)


@rule("avg_pool2d", "adaptive_avg_pool2d", "avg_pool1d", "adaptive_avg_pool1d", "_adaptive_avg_pool2d",
      "max_pool2d", "max_pool1d", "adaptive_max_pool2d", kind="add")
def pool_add(ctx, node):
    L = ctx.state(node.args[0])
    if varying_axes(L) - {0, 1}:
        return ctx.kill_all("a translation that varies over the pooled positions")
    so = node_shape(node)
    base = L[(slice(None), slice(None)) + (0,) * (L.ndim - 2)]
    ctx.cite("additive_passthrough")
    return np.broadcast_to(base.reshape(base.shape + (1,) * (len(so) - 2)), so)
