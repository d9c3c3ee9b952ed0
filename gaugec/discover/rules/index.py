"""Index-moving ops: the same numpy operation moves a probe's array, so an action follows its indices.

Lemma: ``index_transport`` (P(Ax) = (P A P^+) P x). These maps are shared by every probe kind and by parameter
views, so a reshape into heads, a transpose, a GQA expand or a fused-QKV split needs no special case: the solver
sees the coordinates wherever they land and refines blocks by the fibres that later ops impose.
"""
from __future__ import annotations

import dataclasses
import operator

import numpy as np
import sympy as sp
import torch
import torch.fx

from gaugec.discover.fx import arg, node_shape, norm_dim, op_name
from gaugec.discover.registry import INDEX_RULES, PatternMatch, pattern, rule
from gaugec.discover.state import param_axis_coords
from gaugec.plan.gauge import Leg
from gaugec.prove.lemmas import lemma


def _src(state, a):
    return state.get(a) if isinstance(a, torch.fx.Node) else None


def apply_index_op(engine, node: torch.fx.Node, state: dict, fill: int = -1):
    fn = INDEX_RULES[_name(node)]
    return fn(node, state, fill)


def _name(node):

    return op_name(node)


def _data(node, state, fill):
    x = arg(node, 0, "self")
    a = _src(state, x)
    if a is None:
        shp = node_shape(x)
        a = np.full(shp, fill, dtype=np.int64)
    return a


@rule("view", "_unsafe_view", "reshape", "view_copy", "unsqueeze", "squeeze", "flatten", "unflatten", "view_as",
      "reshape_as", kind="index")
def _reshape(node, state, fill):
    return np.ascontiguousarray(_data(node, state, fill)).reshape(node_shape(node))


@rule("clone", "contiguous", "alias", "detach", "_to_copy", "to", "type_as", "lift_fresh_copy", "dropout",
      "feature_dropout", "alpha_dropout", "_assert_tensor_metadata", kind="index")
def _identity(node, state, fill):
    return _data(node, state, fill)


@rule("transpose", "swapaxes", kind="index")
def _transpose(node, state, fill):
    a = _data(node, state, fill)
    return np.swapaxes(a, norm_dim(arg(node, 1, "dim0"), a.ndim), norm_dim(arg(node, 2, "dim1"), a.ndim))


@rule("t", "numpy_T", kind="index")
def _t(node, state, fill):
    return _data(node, state, fill).T


@rule("permute", kind="index")
def _permute(node, state, fill):
    a = _data(node, state, fill)
    return np.transpose(a, [norm_dim(d, a.ndim) for d in arg(node, 1, "dims")])


@rule("movedim", kind="index")
def _movedim(node, state, fill):
    a = _data(node, state, fill)
    return np.moveaxis(a, arg(node, 1, "source"), arg(node, 2, "destination"))


@rule("expand", "broadcast_to", "expand_as", kind="index")
def _expand(node, state, fill):
    a = _data(node, state, fill)
    shape = node_shape(node)
    a = a.reshape((1,) * (len(shape) - a.ndim) + a.shape)
    return np.broadcast_to(a, shape)


@rule("slice", "narrow", kind="index")
def _slice(node, state, fill):
    a = _data(node, state, fill)
    dim = norm_dim(arg(node, 1, "dim", 0), a.ndim)
    if _name(node) == "narrow":
        start = arg(node, 2, "start")
        end, step = start + arg(node, 3, "length"), 1
    else:
        start, end, step = arg(node, 2, "start", None), arg(node, 3, "end", None), arg(node, 4, "step", 1)
    n = a.shape[dim]
    start = 0 if start is None else start
    end = n if end is None else min(end, n)
    sl = [slice(None)] * a.ndim
    sl[dim] = slice(start, end, step)
    return a[tuple(sl)]


@rule("select", kind="index")
def _select(node, state, fill):
    a = _data(node, state, fill)
    dim = norm_dim(arg(node, 1, "dim"), a.ndim)
    return np.take(a, arg(node, 2, "index"), axis=dim)


@rule("flip", kind="index")
def _flip(node, state, fill):
    a = _data(node, state, fill)
    return np.flip(a, axis=tuple(norm_dim(d, a.ndim) for d in arg(node, 1, "dims")))


@rule("repeat_interleave", kind="index")
def _repeat_interleave(node, state, fill):
    a = _data(node, state, fill)
    reps = arg(node, 1, "repeats")
    dim = arg(node, 2, "dim", None)
    if not isinstance(reps, int) or dim is None:
        raise NotImplementedError("repeat_interleave with tensor repeats")
    return np.repeat(a, reps, axis=norm_dim(dim, a.ndim))


@rule("repeat", kind="index")
def _repeat(node, state, fill):
    a = _data(node, state, fill)
    reps = list(arg(node, 1, "repeats"))
    a = a.reshape((1,) * (len(reps) - a.ndim) + a.shape)
    return np.tile(a, reps)


def _list_arrays(node, state, fill):
    out = []
    for t in arg(node, 0, "tensors"):
        a = _src(state, t)
        out.append(a if a is not None else np.full(node_shape(t), fill, dtype=np.int64))
    return out


@rule("cat", "concat", "concatenate", kind="index")
def _cat(node, state, fill):
    arrs = [a for a in _list_arrays(node, state, fill) if a.size or a.ndim > 1]
    dim = arg(node, 1, "dim", 0)
    return np.concatenate(arrs, axis=norm_dim(dim, arrs[0].ndim))


@lemma("cat_writer", "[A x, A p] = A [x, p]: a per-feature map passes a concatenation along another axis when the "
       "concatenated parameter (a class token) moves with it")
def _cat_writer():
    A = sp.Matrix(2, 2, sp.symbols("a0:4"))
    X, p = sp.Matrix(2, 3, sp.symbols("x0:6")), sp.Matrix(sp.symbols("p0:2"))
    return [(A * X).row_join(A * p) - A * X.row_join(p)]


def cat_moves_parameters(ctx, node, out: np.ndarray) -> np.ndarray:
    """A multiplicative probe at ``cat([x, p, ...], dim)`` with p a parameter (through expand, a ViT's class token)
    the probe does not reach: when the acted parts carry one row of coordinates along the last (feature) axis, the
    same at every position, and ``dim`` is not that axis, p moves with them (lemma ``cat_writer``) and the output is
    acted on everywhere. Otherwise ``out`` is returned as it is (the parameter's part untouched)."""
    tensors = node.args[0]
    dim = norm_dim(arg(node, 1, "dim", 0), out.ndim)
    params = [a for a in tensors if isinstance(a, torch.fx.Node) and ctx.state(a) is None
              and ctx.param_view(a) is not None]
    if not params or dim == out.ndim - 1 or out.shape[-1] == 0:
        return out
    sizes = [node_shape(a)[dim] for a in tensors]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    acted = np.concatenate([np.moveaxis(np.take(out, range(starts[k], starts[k + 1]), axis=dim), dim, 0)
                            .reshape(-1, out.shape[-1]) for k, a in enumerate(tensors) if a not in params])
    if not len(acted) or (acted < 0).any() or not (acted == acted[:1]).all():
        return out
    row = acted[0]
    legs = []
    for a in params:
        pv = ctx.param_view(a)
        found = param_axis_coords(pv.P, np.broadcast_to(row, node_shape(a)), ctx.engine.gg.params[pv.param].shape)
        if found is None:
            return out
        legs.append((pv, found))
    for pv, (axis, coords) in legs:
        ctx.leg(pv.param, "out", axis=axis, coords=coords)
    ctx.cite("cat_writer")
    return np.broadcast_to(row, out.shape).copy()


def seed_row_shift(sc, pv, labels):
    """The part of a parameter's translation that is one scalar per row, p + s 1 along the last axis (a position
    table's rows, a class token): it survives a layer norm where the whole translation does not. ``labels``: per
    position of the node, the parameter row (None: no such rows)."""
    if labels is not None:
        sc.probe("add", "row_shift", labels.copy(), [Leg(pv.param, "shift", axes=(len(pv.pshape) - 1,))],
                 describe=f"row shift of {pv.param} at {sc.node.name}", cites=("row_shift",))


@rule("cat", "concat", "concatenate", kind="seed")
def seed_cat_translation(sc, node):
    """A parameter concatenated beside computed tensors (a ViT's class token before the patches) is a writer of the
    result like a bias: its translation p + t is a probe, zero on the other parts."""
    tensors = node.args[0]
    shape = node_shape(node)
    if shape is None or not all(isinstance(a, torch.fx.Node) and node_shape(a) is not None for a in tensors):
        return
    computed = [a for a in tensors if sc.param_view(a) is None]
    if not computed:
        return
    dim = norm_dim(arg(node, 1, "dim", 0), len(shape))
    starts = np.concatenate([[0], np.cumsum([node_shape(a)[dim] for a in tensors])])
    for k, a in enumerate(tensors):
        pv = sc.param_view(a)
        if pv is None:
            continue
        P = np.full(shape, -1, dtype=np.int64)
        region = [slice(None)] * len(shape)
        region[dim] = slice(int(starts[k]), int(starts[k + 1]))
        P[tuple(region)] = np.broadcast_to(pv.P, node_shape(a))
        sc.probe("add", "translation", P, [Leg(pv.param, "shift", axes=())],
                 describe=f"translation of {pv.param} at {node.name}", cites=("additive_passthrough",))
        rows = pv.row_labels()
        if rows is not None and dim != len(shape) - 1:
            labels = np.full(shape, -1, dtype=np.int64)
            labels[tuple(region)] = np.broadcast_to(rows, node_shape(a))
            seed_row_shift(sc, pv, labels)


@rule("stack", kind="index")
def _stack(node, state, fill):
    arrs = _list_arrays(node, state, fill)
    return np.stack(arrs, axis=norm_dim(arg(node, 1, "dim", 0), arrs[0].ndim + 1))


@rule("split", "split_with_sizes", "chunk", "unbind", "tensor_split", kind="index")
def _split(node, state, fill):
    a = _data(node, state, fill)
    vals = node.meta.get("val")
    name = _name(node)
    dim_pos = {"split": 2, "split_with_sizes": 2, "chunk": 2, "unbind": 1, "tensor_split": 2}[name]
    dim = norm_dim(arg(node, dim_pos, "dim", 0), a.ndim)
    if name == "unbind":
        return tuple(np.take(a, i, axis=dim) for i in range(a.shape[dim]))
    sizes = [int(v.shape[dim]) for v in vals]
    bounds = np.cumsum(sizes)[:-1]
    return tuple(np.split(a, bounds, axis=dim))


@rule("getitem", kind="index")
def _getitem(node, state, fill):
    src, i = node.args[0], node.args[1]
    a = _src(state, src)
    if isinstance(a, tuple):
        return a[i]
    raise NotImplementedError("getitem on a non-tuple state")


# operator.getitem's name as op_name reports it
INDEX_RULES[operator.getitem.__name__] = _getitem


# ---------------------------------------------------------------------------------------------------------------
# indexing by constant index tensors (Falcon's fused QKV: ``qkv[..., [-2], :]``): the indices are known when the
# graph is captured, so the same numpy indexing moves the probe's array; an index computed from the input stays a
# barrier ("a data-dependent index")


def constant_value(engine, node) -> np.ndarray | None:
    """The value of a tensor fixed at capture (a lifted constant of torch.export, through copies and casts), or None."""
    while isinstance(node, torch.fx.Node) and node.op == "call_function" and \
            _name(node) in ("lift_fresh_copy", "clone", "alias", "detach", "_to_copy", "to", "contiguous"):
        node = node.args[0]
    if not isinstance(node, torch.fx.Node):
        return None
    ep = engine.gg.exported
    if node.op == "placeholder" and ep is not None:
        name = ep.graph_signature.inputs_to_lifted_tensor_constants.get(node.name)
        value = ep.constants.get(name) if name is not None else None
    elif node.op == "get_attr":
        value = getattr(engine.gg.graph_module, node.target, None)
    else:
        value = None
    if not isinstance(value, torch.Tensor) or value.is_floating_point() or value.is_complex() \
            or value.device.type == "meta":
        return None
    return value.detach().cpu().numpy().astype(np.int64)


@dataclasses.dataclass
class ConstantIndex(PatternMatch):
    """``x[..., idx, ...]`` (aten.index.Tensor) whose index tensors are all capture-time constants."""

    output: torch.fx.Node
    x: torch.fx.Node
    key: tuple                 # per leading axis: slice(None) or the constant index array
    internal: set

    name = "index by constant indices"

    def apply(self, ctx, node):
        a = ctx.state(self.x)
        if a is None:
            return None
        ctx.cite("index_transport")
        return a[self.key]


@pattern("constant index")
def find_constant_indices(engine) -> list[ConstantIndex]:
    out = []
    for n in engine.topo:
        if n.op != "call_function" or _name(n) != "index" or len(n.args) < 2:
            continue
        key = []
        for i in n.args[1]:
            if i is None:
                key.append(slice(None))
                continue
            v = constant_value(engine, i)
            if v is None:
                break
            key.append(v)
        else:
            if isinstance(n.args[0], torch.fx.Node):
                out.append(ConstantIndex(n, n.args[0], tuple(key), {n}))
    return out
