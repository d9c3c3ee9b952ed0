"""Elementwise ops: activations, products, sums, casts.

* ReLU / LeakyReLU pass positive diagonal maps only (``relu_pos_homogeneous``, ``leaky_relu_pos_homogeneous``).
* A product with a tensor the probe does not act on passes diagonal maps (``diag_mul``); when the other factor is
  constant along the acted axes any map passes (``scalar_commute``). A product of two tensors the *same* probe
  acts on is bilinear and refused: the group on one factor must be carried by that factor alone (GLU: the up
  branch is scaled, the gate branch is fixed).
* A product with a parameter vector seeds a diagonal gauge on that parameter (a norm gain, ``norm_gain``;
  Gemma's (1 + w) gains, ``offset_gain``).
* Sums: a bias parameter added to an acted tensor is a writer leg (``linear_writer``); a translation passes sums
  (``additive_passthrough``), and x - mean(x) cancels a translation that is constant along the mean's axis
  (``mean_cancel``).
* GELU, SiLU, tanh, sigmoid, exp, ...: barriers (no continuous symmetry of their input passes).
"""
from __future__ import annotations

import numbers

import numpy as np
import sympy as sp

from gaugec.arrays import groups
from gaugec.discover.fx import CAST_OPS, arg, node_shape, op_name, varying_axes
from gaugec.discover.registry import barrier, rule
from gaugec.discover.state import param_axis_coords
from gaugec.discover.rules.index import seed_row_shift
from gaugec.discover.rules.linear import _absorb_bias, absorb_by_embedding
from gaugec.discover.rules.norm import conjugate
from gaugec.plan.gauge import Leg
from gaugec.prove.lemmas import lemma

# ---------------------------------------------------------------------------------------------------------------
# lemmas


@lemma("relu_pos_homogeneous", "relu(c x) = c relu(x) for c > 0")
def _relu_lemma():
    x = sp.Symbol("x", real=True)
    c = sp.Symbol("c", positive=True)
    relu = lambda z: sp.Piecewise((z, z > 0), (0, True))  # noqa: E731
    return [sp.piecewise_fold(relu(c * x) - c * relu(x)).subs(x, v) for v in (sp.Symbol("u", positive=True),
                                                                               -sp.Symbol("u", positive=True), 0)]


@lemma("leaky_relu_pos_homogeneous", "leaky_relu(c x) = c leaky_relu(x) for c > 0, any slope")
def _leaky_lemma():
    x = sp.Symbol("x", real=True)
    c = sp.Symbol("c", positive=True)
    s = sp.Symbol("s", real=True)
    lr = lambda z: sp.Piecewise((z, z > 0), (s * z, True))  # noqa: E731
    u = sp.Symbol("u", positive=True)
    return [(lr(c * x) - c * lr(x)).subs(x, v) for v in (u, -u, 0)]


@lemma("norm_gain", "(c g) n + c b then W diag(1/c): W diag(1/c) (diag(c g) n + c b) = W (diag(g) n + b)")
def _norm_gain():
    c = sp.symbols("c0:2", nonzero=True)
    g, b, n = sp.symbols("g0:2"), sp.symbols("b0:2"), sp.symbols("n0:2")
    W = sp.Matrix(2, 2, sp.symbols("w0:4"))
    y = sp.Matrix([c[i] * g[i] * n[i] + c[i] * b[i] for i in range(2)])
    y0 = sp.Matrix([g[i] * n[i] + b[i] for i in range(2)])
    return [W * sp.diag(*[1 / ci for ci in c]) * y - W * y0]


@lemma("offset_gain", "(1 + w') = c (1 + w) for w' = c (1 + w) - 1: an offset gain is a reparametrised gain")
def _offset_gain():
    c, w, o = sp.symbols("c w o")
    w_new = c * (o + w) - o
    return [(o + w_new) - c * (o + w)]


@lemma("glu_rescale", "(c u) * g then W col / c: down(diag(1/c) (diag(c) u ⊙ g)) = down(u ⊙ g), sign of c free")
def _glu_lemma():
    c = sp.symbols("c0:2", nonzero=True)
    u, g = sp.symbols("u0:2"), sp.symbols("g0:2")
    W = sp.Matrix(2, 2, sp.symbols("w0:4"))
    h = sp.Matrix([c[i] * u[i] * g[i] for i in range(2)])
    h0 = sp.Matrix([u[i] * g[i] for i in range(2)])
    return [W * sp.diag(*[1 / ci for ci in c]) * h - W * h0]


# ---------------------------------------------------------------------------------------------------------------
# activations

barrier("the activation is not positively homogeneous: no rescale passes it", "gelu", "silu", "tanh", "sigmoid",
        "softplus", "elu", "selu", "celu", "mish", "hardswish", "hardsigmoid", "exp", "log", "sin", "cos",
        "sqrt", "rsqrt", "pow", "reciprocal", "abs", "sign", "erf", "clamp", "clamp_min", "clamp_max", "hardtanh",
        "gelu_", "silu_", "tanh_", "sigmoid_", "logsigmoid", "square", "log1p", "expm1")
barrier("a norm over the acted axis (only a common positive scale passes a layer / RMS norm, at eps = 0; residual "
        "rotations are not derived yet)",
        "layer_norm", "rms_norm", "native_layer_norm", "group_norm", "batch_norm", "instance_norm",
        "_native_batch_norm_legit_no_training", "native_batch_norm", "_native_batch_norm_legit")   # rules override
barrier("an in-place write into another tensor (where the written values go is not followed)", "copy_", "fill_",
        "index_put_", "masked_fill_", "slice_scatter", "select_scatter")
barrier("a data-dependent index or comparison", "index", "index_select", "gather", "scatter", "where", "masked_fill",
        "argmax", "argmin", "topk", "sort", "eq", "ne", "lt", "gt", "le", "ge", "max", "min", "amax", "amin",
        "embedding_bag", "index_put", "masked_scatter", "cumsum", "tril", "triu")


@rule("relu", "relu_", kind="mult")
def relu_mult(ctx, node):
    C = ctx.state(node.args[0])
    ctx.restrict(C, "pos")
    ctx.cite("relu_pos_homogeneous")
    ctx.tag("relu", C)
    return C


@rule("leaky_relu", "leaky_relu_", kind="mult")
def leaky_relu_mult(ctx, node):
    C = ctx.state(node.args[0])
    ctx.restrict(C, "pos")
    ctx.cite("leaky_relu_pos_homogeneous")
    ctx.tag("relu", C)
    return C


@rule("relu", "relu_", "leaky_relu", "leaky_relu_", kind="add")
def relu_add(ctx, node):
    return ctx.kill_all("a translation does not pass a rectifier")


@rule("neg", kind="both")
def neg_rule(ctx, node):
    ctx.cite("scalar_commute")
    return ctx.state(node.args[0])


# ---------------------------------------------------------------------------------------------------------------
# products


def _operands(node):
    return arg(node, 0, "self"), arg(node, 1, "other")


def _other_varies_on(ctx, other, C) -> bool:
    """Does the non-acted factor vary along an axis the action acts on?"""
    if not hasattr(other, "meta"):
        return False
    shape = node_shape(other)
    if shape is None:
        return False
    shape = (1,) * (C.ndim - len(shape)) + tuple(shape)
    return any(shape[a] > 1 for a in varying_axes(C))


@rule("mul", "mul_", kind="mult")
def mul_mult(ctx, node):
    x, y = _operands(node)
    Cx, Cy = ctx.state(x), ctx.state(y)
    if Cx is not None and Cy is not None:
        return ctx.kill_all("a product of two tensors the same group acts on (bilinear: refused)")
    C, other = (Cx, y) if Cx is not None else (Cy, x)
    C = np.broadcast_to(C.reshape((1,) * (len(node_shape(node)) - C.ndim) + C.shape), node_shape(node))
    if isinstance(other, numbers.Number) or not _other_varies_on(ctx, other, C):
        ctx.cite("scalar_commute")
        return C
    if ctx.probe.mode == "orth":
        return conjugate(ctx, C, other)
    ctx.restrict(C, "scalar")
    ctx.cite("diag_mul")
    if ctx.param_view(other) is None:
        ctx.tag("glu", C)
        ctx.cite("glu_rescale")
    return C


@rule("div", "div_", kind="mult")
def div_mult(ctx, node):
    x, y = _operands(node)
    if ctx.state(y) is not None:
        return ctx.kill_all("division by a tensor the group acts on")
    return mul_mult(ctx, node)


def _relabel_product(ctx, L, other, out_shape):
    """delta * y: positions keep their label only where y is constant; y's varying axes refine the labels."""
    L = np.broadcast_to(L.reshape((1,) * (len(out_shape) - L.ndim) + L.shape), out_shape)
    if isinstance(other, numbers.Number):
        return L
    shape = node_shape(other)
    if shape is None:
        return L
    shape = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    ypos = np.arange(int(np.prod(shape, dtype=np.int64))).reshape(shape)
    if ypos.size == 1:
        return L
    if ypos.size == L.size:     # y varies everywhere: every position is its own label
        out = ctx.engine.fresh_labels(L.size) + np.arange(L.size).reshape(out_shape)
    else:
        out = ctx.fresh(L, np.broadcast_to(ypos, out_shape))
    return np.where(L >= 0, out, -1)


@rule("mul", "mul_", kind="add")
def mul_add(ctx, node):
    x, y = _operands(node)
    Lx, Ly = ctx.state(x), ctx.state(y)
    if Lx is not None and Ly is not None:
        return ctx.kill_all("a product of two translated tensors")
    L, other = (Lx, y) if Lx is not None else (Ly, x)
    ctx.cite("additive_passthrough")
    return _relabel_product(ctx, L, other, node_shape(node))


@rule("div", "div_", kind="add")
def div_add(ctx, node):
    x, y = _operands(node)
    if ctx.state(y) is not None:
        return ctx.kill_all("division by a translated tensor")
    ctx.cite("additive_passthrough")
    return _relabel_product(ctx, ctx.state(x), y, node_shape(node))


# ---------------------------------------------------------------------------------------------------------------
# sums


def _broadcast(a, shape):
    return np.broadcast_to(a.reshape((1,) * (len(shape) - a.ndim) + a.shape), shape)


@rule("add", "add_", "sub", "sub_", "rsub", kind="mult")
def add_mult(ctx, node):
    x, y = _operands(node)
    shape = node_shape(node)
    Cx, Cy = ctx.state(x), ctx.state(y)
    if Cx is not None and Cy is not None:
        a, b = _broadcast(Cx, shape), _broadcast(Cy, shape)
        if np.array_equal(a, b):
            ctx.cite("scalar_commute")
            return a
        return ctx.kill_all("a sum of two differently acted tensors (a residual stream: not yet derived)")
    C, other = (Cx, y) if Cx is not None else (Cy, x)
    C = _broadcast(C, shape)
    pv = ctx.param_view(other)
    if pv is not None:
        pshape = ctx.engine.gg.params[pv.param].shape
        Pb = _broadcast(pv.P, shape)

        found = param_axis_coords(Pb, C, pshape)
        if found is not None and not ((Pb[C < 0]).size and np.isin(Pb[C < 0], Pb[C >= 0]).any()):
            ax, coords = found
            ctx.leg(pv.param, "out", axis=ax, coords=coords)
            ctx.cite("linear_writer")
            return C
    if node.target._schema.name.split("::")[-1].startswith("add") and _move_writer(ctx, other, C, shape):
        return C
    return ctx.kill_all("adds a tensor the group does not act on (a residual stream whose other writer cannot be "
                        "moved with it)")


@lemma("residual_sum", "A x + ((A W) z + A b) = A (x + W z + b): a residual sum carries the map when its other "
       "writer moves with it")
def _residual_sum():
    A, W = sp.Matrix(2, 2, sp.symbols("a0:4")), sp.Matrix(2, 2, sp.symbols("w0:4"))
    x, z, b = sp.Matrix(sp.symbols("x0:2")), sp.Matrix(sp.symbols("z0:2")), sp.Matrix(sp.symbols("b0:2"))
    return [A * x + ((A * W) * z + A * b) - A * (x + W * z + b)]


def _move_writer(ctx, other, C: np.ndarray, shape) -> bool:
    """A residual sum x + W z + b with the group on x: move the other writers too, A (x + W z + b) = A x + (A W) z +
    A b. ``other`` must be linear writers (through casts, eval-mode dropout and sums of such writers: a parallel
    attention + MLP block) whose outputs feed only this sum and whose inputs the group leaves unchanged (their state
    is None: never reached, absorbed by a reader, or tied by a norm; a block killed on the way is fixed anyway). The
    action must cover the whole feature axis, the same at every position."""
    writers = _writers(ctx, other)
    n = shape[-1]
    rows = C.reshape(-1, n)
    if not writers or (rows < 0).any() or not (rows == rows[:1]).all():
        return False
    legs = []
    for lin in writers:
        if op_name(lin) == "embedding":     # a table's rows: E <- E A^T moves its columns (embedding_writer)
            pvW, pvb, out_axis = ctx.param_view(arg(lin, 0, "weight")), None, 1
        elif op_name(lin) == "addmm":       # b + x @ W (Hugging Face Conv1D): W's output axis is its second
            pvW, pvb, out_axis = ctx.param_view(arg(lin, 2, "mat2")), ctx.param_view(arg(lin, 0, "self")), 1
        elif op_name(lin) in ("matmul", "mm"):  # x @ Wᵀ written out (Falcon's linear): the view's second axis
            pvW, pvb, out_axis = ctx.param_view(lin.args[1]), None, 1
        else:
            pvW, pvb, out_axis = ctx.param_view(arg(lin, 1, "weight")), ctx.param_view(arg(lin, 2, "bias")), 0
        if pvW is None or pvW.ndim != 2:
            return False
        wl = param_axis_coords(pvW.fibre(out_axis), rows[0], ctx.engine.gg.params[pvW.param].shape)
        bl = None if pvb is None else param_axis_coords(pvb.P.reshape(-1), rows[0],
                                                         ctx.engine.gg.params[pvb.param].shape)
        if wl is None or (pvb is not None and bl is None):
            return False
        legs.append((lin, pvW, wl))
        if bl is not None:
            legs.append((lin, pvb, bl))
    for lin, pv, (axis, coords) in legs:
        ctx.leg(pv.param, "out", at=lin, axis=axis, coords=coords, part=pv.fixed(axis))
    ctx.cite("linear_writer")
    if any(op_name(lin) == "embedding" for lin in writers):
        ctx.cite("embedding_writer")
    ctx.cite("residual_sum")
    return True


def _unwrap(ctx, node):
    """``node`` with casts, eval-mode dropout and reshapes that keep the feature axis stripped (tokens regrouped: HF
    Conv1D's addmm, a flattened MoE batch): the first node that is none of these, or None when it or a node on the
    way is not a computed tensor that feeds only the next one and that the probe has not reached."""
    while True:
        if not (hasattr(node, "op") and node.op == "call_function" and len(node.users) == 1
                and ctx.state(node) is None):
            return None
        name = op_name(node)
        keeps = name in CAST_OPS or (name == "dropout" and not arg(node, 2, "train", True)) or (
            name in ("view", "reshape", "_unsafe_view")
            and (node_shape(node) or (0,))[-1:] == (node_shape(node.args[0]) or (1,))[-1:])
        if not keeps:
            return node
        node = node.args[0]


def _writers(ctx, node) -> list | None:
    """The linear nodes (linear, addmm, x @ W with W a parameter, embedding lookups) whose outputs (summed, through casts, eval-mode dropout,
    reshapes that keep the feature axis and products with per-token scalars such as a router's weights) make
    ``node``, each on a path that feeds only ``node``'s user and that the probe has not reached; None when ``node``
    is anything else."""
    node = _unwrap(ctx, node)
    if node is None:
        return None
    name = op_name(node)
    if name in ("linear", "addmm", "embedding"):
        inp = {"linear": 0, "addmm": 1, "embedding": 1}[name]
        return [node] if ctx.state(node.args[inp]) is None else None
    if name in ("matmul", "mm") and ctx.param_view(node.args[1]) is not None and ctx.param_view(node.args[0]) is None:
        return [node] if ctx.state(node.args[0]) is None else None
    if name == "mul" and all(hasattr(a, "op") for a in node.args[:2]):
        # a writer times a per-token scalar (a router's weight): A (s W z) = s (A W) z when s is constant along the
        # features and the group does not reach it
        for w, s in (node.args[:2], node.args[1::-1]):
            s_shape = node_shape(s)
            if ctx.state(s) is None and s_shape is not None and (not s_shape or s_shape[-1] == 1):
                found = _writers(ctx, w)
                if found is not None:
                    return found
        return None
    if name in ("add", "add_") and arg(node, 2, "alpha", 1) == 1 and all(hasattr(a, "op") for a in node.args[:2]):
        parts = [_writers(ctx, a) for a in node.args[:2]]       # (in place: Falcon's mlp_output += attn_output)
        return None if None in parts else parts[0] + parts[1]
    return None


@rule("add", "add_", "sub", "sub_", "rsub", kind="add")
def add_add(ctx, node):
    x, y = _operands(node)
    shape = node_shape(node)
    Lx, Ly = ctx.state(x), ctx.state(y)
    name = node.target._schema.name.split("::")[-1]
    if Lx is not None and Ly is not None:
        a, b = _broadcast(Lx, shape), _broadcast(Ly, shape)
        if name.startswith("sub") and np.array_equal(a, b):
            ctx.cite("mean_cancel")
            ctx.sink("centring")
            return None
        ctx.cite("additive_passthrough")
        return ctx.fresh(a, b)
    L, other = (Lx, y) if Lx is not None else (Ly, x)
    L = _broadcast(L, shape)
    if ctx.param_view(other) is not None and name.startswith("add") and ctx.probe.node is not node:
        if _absorb_bias(ctx, L, other, shape):
            return None
    if name.startswith("add") and arg(node, 2, "alpha", 1) == 1 and (absorb_by_embedding(ctx, L, other, shape)
                                                                       or _absorb_by_other_writer(ctx, L, other, shape)):
        return None
    ctx.cite("additive_passthrough")
    return L


@lemma("residual_bias_absorb", "(x + t) + (W z + b - t) = x + (W z + b): the other writer's bias of a sum takes a "
       "translation of one summand")
def _residual_bias_absorb():
    W = sp.Matrix(2, 2, sp.symbols("w0:4"))
    x, z, b, t = (sp.Matrix(sp.symbols(f"{v}0:2")) for v in "xzbt")
    return [(x + t) + (W * z + (b - t)) - (x + (W * z + b))]


def _absorb_by_other_writer(ctx, L, other, shape) -> bool:
    """A translation meets a sum x + (W z + b) whose other summand is a linear the probe has not reached, feeding only
    this sum (through casts, eval-mode dropout and reshapes that keep the features): its bias takes the translation, b <- b - delta, when the
    translation has the bias's shape (``residual_bias_absorb``; a post-LN stream's bias, absorbed by the attention
    output's or the MLP's bias). Passing the translation on instead finds the same span: the difference is that
    bias's own translation, a probe of its own."""
    lin = _unwrap(ctx, other)
    if lin is None:
        return False
    name = op_name(lin)
    if name == "linear":
        x, b = arg(lin, 0, "input"), arg(lin, 2, "bias")
    elif name == "addmm":
        x, b = arg(lin, 1, "mat1"), arg(lin, 0, "self")
    else:
        return False
    if b is None or ctx.state(x) is not None or (node_shape(lin) or (0,))[-1:] != tuple(shape)[-1:]:
        return False
    if _absorb_bias(ctx, L, b, shape, at=lin):
        ctx.cite("residual_bias_absorb")
        return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# seeds: a product with a parameter vector is a gain; a sum with a parameter vector is a translation


@rule("mul", "mul_", kind="seed")
def seed_gain(sc, node):
    x, y = _operands(node)
    shape = node_shape(node)
    for a, b in ((x, y), (y, x)):
        pv = sc.param_view(b)
        if pv is None or sc.param_view(a) is not None or not hasattr(a, "meta") or shape is None:
            continue
        P = _broadcast(pv.P, shape)
        if P.size == 0:
            continue
        pshape = sc.engine.gg.params[pv.param].shape
        C = groups(P)[2].reshape(shape)

        found = param_axis_coords(P, C, pshape)
        if found is None:
            continue
        ax, coords = found
        sc.probe("mult", "diag", C, [Leg(pv.param, "gain", axis=ax, coords=coords, offset=pv.offset)],
                 coord_kind="scalar", describe=f"gain {pv.param} at {node.name}", tags=("norm_gain",),
                 cites=("norm_gain", "offset_gain") if pv.offset else ("norm_gain",))


@rule("add", "add_", kind="seed")
def seed_translation(sc, node):
    x, y = _operands(node)
    shape = node_shape(node)
    for a, b in ((x, y), (y, x)):
        pv = sc.param_view(b)
        if pv is None or sc.param_view(a) is not None or not hasattr(a, "meta") or shape is None:
            continue
        P = _broadcast(pv.P, shape)
        sc.probe("add", "translation", P.copy(), [Leg(pv.param, "shift", axes=())],
                 describe=f"translation of {pv.param} at {node.name}", cites=("additive_passthrough",))
        rows = pv.row_labels()
        seed_row_shift(sc, pv, None if rows is None else _broadcast(rows, shape))
