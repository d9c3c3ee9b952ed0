"""Normalisation layers: gains are diagonal gauges; LayerNorm absorbs translations along its normalised axes.

* LayerNorm / RMSNorm / BatchNorm (eval) affine outputs g ⊙ n + b seed a diagonal gauge: g_i <- c_i g_i,
  b_i <- c_i b_i, column i of every reader / c_i (``norm_gain``; sign allowed).
* The normalised input of a LayerNorm is centred, so a translation along the all-ones direction of its normalised
  axes is absorbed (``layernorm_shift``); the bias b seeds a translation that a reader's bias can absorb.
* A common positive scaling of the input, c I on the normalised axes, is a gauge only at eps = 0
  (``rmsnorm_scale``, ``layernorm_scale``: the exact breaking term for eps > 0 is part of each lemma). A
  multiplicative probe reaching a norm at eps = 0 is tied to one such scale per normalised vector
  (``norm_input_scale``) and stops there: the norm's output does not move. At eps > 0 the norm is a barrier for it.
* A rotation R (RᵀR = I) passes an RMS norm at any eps, RMS(R x) = R RMS(x) (``rmsnorm_rotation``): the rotation
  twin of a GL probe (mode "orth", see the engine) ties each normalised vector's coordinates to one orthogonal block
  and carries them to the output. The gain then sees it conjugated, γ ⊙ R n = (D R D⁻¹)(γ ⊙ n) with D = diag(γ)
  (``gain_conjugation``), which the linear readers absorb (W ← W D R⁻¹ D⁻¹): the residual-stream rotation. Through
  a LayerNorm the rotations that fix the ones vector pass (O(d − 1), ``layernorm_rotation``: centring commutes with
  them), and the LayerNorm's bias moves with the conjugated rotation.
* The LayerNorm kernel: a LayerNorm's output y = γ ⊙ n + β has Σ n = 0, so γ⁻¹ · y = ⟨β, γ⁻¹⟩ for every input;
  a linear reader moves its rows along γ⁻¹, W <- W + t γ⁻ᵀ, and its output moves by the constant t ⟨β, γ⁻¹⟩, which
  its own bias absorbs (or a translation probe carries downstream; nothing moves at all when β is absent)
  (``layernorm_kernel``). The leg reads γ (a weighted shift, ``Leg.conj``).
  The aten ``layer_norm`` / ``rms_norm`` ops have a rule; the hand-written RMSNorm ``x * rsqrt(mean(x²) + eps)`` is
  recognised as a pattern.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import sympy as sp
import torch.fx

from gaugec.arrays import distinct, groups
from gaugec.discover.fx import CAST_OPS, arg, node_shape, norm_dim, op_name, strip_casts, varying_axes
from gaugec.discover.state import first_positions, param_axis_coords
from gaugec.discover.registry import PatternMatch, pattern, rule, stream_readers, tied_use
from gaugec.discover.rules.linear import _absorb_bias, _ranges, output_segments
from gaugec.plan.gauge import Leg
from gaugec.prove.lemmas import lemma, sym_matrix, sym_vector


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


@lemma("layernorm_scale", "LN(c x) = LN(x) for c > 0 at eps = 0; with eps the breaking term is "
       "c x / sqrt(c^2 v + e) - x / sqrt(v + e/c^2) = 0 evaluated at e/c^2 != e")
def _ln_scale():
    xs = sp.symbols("x0:3", real=True)
    c = sp.Symbol("c", positive=True)
    e = sp.Symbol("e", positive=True)

    def ln(v, eps):
        m = sum(v) / 3
        var = sum((vi - m) ** 2 for vi in v) / 3
        return [(vi - m) / sp.sqrt(var + eps) for vi in v]

    scaled = ln([c * x for x in xs], 0)
    plain = ln(list(xs), 0)
    breaking = [a - b for a, b in zip(ln([c * x for x in xs], e), ln(list(xs), e / c ** 2))]
    return [a - b for a, b in zip(scaled, plain)] + breaking


@lemma("rmsnorm_rotation", "R x / sqrt(|R x|^2 / d + e) = R (x / sqrt(|x|^2 / d + e)) for R^T R = I, at any eps: "
       "the norm reads v only through |v|^2, which R keeps, and a scalar divisor commutes with R")
def _rms_rotation():
    t, e = sp.Symbol("t", real=True), sp.Symbol("e", positive=True)
    x = sp.Matrix(sp.symbols("x0:2", real=True))
    R = sp.Matrix([[sp.cos(t), -sp.sin(t)], [sp.sin(t), sp.cos(t)]])
    square = lambda v: (v.T * v)[0]                # noqa: E731
    rms_of_square = lambda q: sp.sqrt(q / 2 + e)   # noqa: E731  (RMSNorm(v) = v / rms_of_square(|v|^2))
    # two steps, each a plain identity (one trigonometric simplification instead of one of the whole quotient)
    return [square(R * x) - square(x),
            R * x / rms_of_square(square(x)) - R * (x / rms_of_square(square(x)))]


@lemma("layernorm_rotation", "LN(R x) = R LN(x) for R^T R = I with R 1 = 1, at any eps: centring commutes with R and "
       "the centred norm is kept, so both sides divide R centre(x) by one scalar")
def _ln_rotation():
    t = sp.Symbol("t", real=True)
    x = sp.Matrix(sp.symbols("x0:3", real=True))
    # a rotation by t about the ones axis: U diag(1, R2(t)) U^T with U's first column (1, 1, 1)/sqrt(3)
    u = [sp.Matrix([1, 1, 1]) / sp.sqrt(3), sp.Matrix([1, -1, 0]) / sp.sqrt(2), sp.Matrix([1, 1, -2]) / sp.sqrt(6)]
    U = sp.Matrix.hstack(*u)
    R = U * sp.diag(1, sp.Matrix([[sp.cos(t), -sp.sin(t)], [sp.sin(t), sp.cos(t)]])) * U.T

    centre = lambda v: v - sp.ones(3, 1) * (sum(v) / 3)     # noqa: E731
    square = lambda v: (v.T * v)[0]                         # noqa: E731
    # LN(v) = centre(v) / sqrt(|centre(v)|^2 / 3 + e); in steps, each a plain identity: R fixes the ones vector,
    # so centring commutes with R; R keeps the centred vector's norm; what is left is one scalar divisor on both sides
    c = centre(x)
    return [R * sp.ones(3, 1) - sp.ones(3, 1), centre(R * x) - R * c, square(R * c) - square(c)]


@lemma("gain_conjugation", "g * (R n) = (D R D^-1) (g * n) with D = diag(g): a gain after a rotated tensor is the "
       "rotation conjugated by D, which a linear reader absorbs (W <- W D R^-1 D^-1)")
def _gain_conjugation():
    R, W = sp.Matrix(2, 2, sp.symbols("r0:4")), sp.Matrix(2, 2, sp.symbols("w0:4"))
    g, n = sp.symbols("g0:2", nonzero=True), sp.Matrix(sp.symbols("n0:2"))
    D = sp.diag(*g)
    conj = D * R * D.inv()
    return [D * (R * n) - conj * (D * n), (W * D * R.inv() * D.inv()) * conj * (D * n) - W * (D * n)]


@lemma("layernorm_kernel", "(W + t d^-T)(d * n + beta) + b - t <beta, d^-1> = W (d * n + beta) + b when sum(n) = 0: "
       "a reader of a layer norm's output moves its rows along the inverse gain, its bias takes the constant")
def _ln_kernel():
    d = sp.symbols("d0:3", nonzero=True)
    n0, n1 = sp.symbols("n0 n1", real=True)
    n = [n0, n1, -n0 - n1]                      # the centred output of a layer norm sums to zero
    W, t, beta, b = sym_matrix("w", 2, 3), sym_vector("t", 2), sym_vector("beta", 3), sym_vector("b", 2)
    dinv = sp.Matrix([1 / di for di in d])
    y = sp.Matrix([d[i] * n[i] + beta[i] for i in range(3)])
    moved = (W + t * dinv.T) * y + b - t * (beta.T * dinv)[0]
    return [moved - (W * y + b)]


def layer_norm_behind(x) -> torch.fx.Node | None:
    """The ``layer_norm`` node over the last axis whose output ``x`` is, up to casts, copies, eval-mode dropout,
    views that keep the last axis (HF Conv1D's [B, T, d] -> [B T, d]) and selections of whole rows (a ViT's class
    token, ``h[:, 0]``); None otherwise."""
    for _ in range(16):
        if not (isinstance(x, torch.fx.Node) and x.op == "call_function"):
            return None
        name = op_name(x)
        if name == "layer_norm":
            return x if len(arg(x, 1, "normalized_shape")) == 1 else None
        src = x.args[0] if x.args else None
        keeps = name in CAST_OPS or name in ("detach", "view", "_unsafe_view", "reshape") or (
            name == "dropout" and not arg(x, 2, "train", True)) or (
            name in ("select", "slice") and isinstance(src, torch.fx.Node) and node_shape(src)
            and norm_dim(arg(x, 1, "dim", 0), len(node_shape(src))) != len(node_shape(src)) - 1)
        if not keeps or not isinstance(src, torch.fx.Node):
            return None
        a, b = node_shape(src), node_shape(x)
        if not a or not b or a[-1] != b[-1]:
            return None
        x = src
    return None


@rule("linear", "addmm", kind="seed")
def seed_layernorm_kernels(sc, node):
    """A linear (or HF Conv1D's addmm(b, x, W)) reading a layer norm's output seeds its kernel."""
    if op_name(node) == "linear":
        seed_layernorm_kernel(sc, node, arg(node, 0, "input"), arg(node, 1, "weight"), arg(node, 2, "bias"), 1,
                              "linear")
    else:
        seed_layernorm_kernel(sc, node, arg(node, 1, "mat1"), arg(node, 2, "mat2"), arg(node, 0, "self"), 0, "addmm")


def seed_layernorm_kernel(sc, node, x, W, b, w_in_view_axis: int, what: str):
    """Seed the LayerNorm kernel at a linear reader ``node`` (output features on its last axis) of ``x``: the shift
    W <- W + t γ⁻ᵀ along the weight view's input axis ``w_in_view_axis`` (``layernorm_kernel``). With the layer
    norm's bias β the output moves by t ⟨β, γ⁻¹⟩ per feature: the reader's bias absorbs it, or the probe carries it;
    without β nothing moves and the probe is closed at its seed."""
    ln = layer_norm_behind(x)
    pvW, shape = sc.param_view(W), node_shape(node)
    if ln is None or pvW is None or shape is None:
        return
    d = node_shape(ln)[-1]
    pshape = sc.engine.gg.params[pvW.param].shape
    found = param_axis_coords(pvW.fibre(w_in_view_axis), np.arange(d), pshape)
    if found is None or (found[1] < 0).any():
        return
    axis, features = found
    part = pvW.fixed(axis)
    if len(pshape) - len(part) != 2:
        return
    leg = Leg(pvW.param, "shift", axes=(axis - sum(k < axis for k, _ in part),), part=part)
    gamma, beta = arg(ln, 2, "weight"), arg(ln, 3, "bias")
    if gamma is not None:
        pvg = sc.param_view(gamma)
        if pvg is None or pvg.ndim != 1:
            return
        leg.conj, leg.conj_offset, leg.conj_index = pvg.param, pvg.offset, pvg.P.reshape(-1)[features]
    if beta is not None and sc.param_view(beta) is None:
        return                  # a computed bias: not derived
    describe = f"rows of {what} {node.name} along the inverse gain of layer norm {ln.name}"
    legs, initial = [leg], np.full(shape, -1)
    if beta is not None:
        initial = np.broadcast_to(np.arange(shape[-1]), shape)
        pvb = sc.param_view(b)
        if pvb is not None and pvb.ndim == 1 and pvb.shape[0] == shape[-1] and not pvb.fixed(-1):
            first = first_positions(np.broadcast_to(pvb.P, shape).reshape(-1), shape[-1])
            legs.append(Leg(pvb.param, "absorb", site=node.name, site_index=first))
            initial = np.full(shape, -1)
    if (initial >= 0).any():
        # without a bias the reader's output moves by t ⟨β, γ⁻¹⟩: one probe per segment of its features (GPT-J's
        # keys: the non-rotary part's translation is absorbed by the softmax, the rotary part's is not)
        rows = param_axis_coords(pvW.fibre(1 - w_in_view_axis), np.arange(shape[-1]), pshape)
        segments = output_segments(sc.engine, node, len(shape) - 1, shape[-1]) if rows is not None else []
        if len(segments) > 1:
            for seg in segments:
                cut = dataclasses.replace(leg, select=np.nonzero(np.isin(rows[1], seg))[0])
                sc.probe("add", "centred_reader", np.where(np.isin(initial, seg), initial, -1), [cut],
                         describe=f"{describe} [{_ranges(seg)}]", cites=("layernorm_kernel",))
            return
    p = sc.probe("add", "centred_reader", initial, legs, describe=describe, cites=("layernorm_kernel",))
    if not (initial >= 0).any():
        p.sinks.append((node.name, "layernorm_kernel"))


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
    _seed_shear(sc, node)


# ---------------------------------------------------------------------------------------------------------------
# the shear of a layer norm's output: the coupled kernel of readers without a bias


@lemma("layernorm_shear", "A = D (I + w 1ᵀ) D⁻¹ fixes D n when sum(n) = 0, so W A⁻¹ (D n + A β) = W (D n + β): the "
       "bias takes A, the readers A⁻¹ (their rows move along the inverse gain by the amount that keeps W β)")
def _ln_shear():
    d = sp.symbols("d0:3", nonzero=True)
    n0, n1 = sp.symbols("n0 n1", real=True)
    n = sp.Matrix([n0, n1, -n0 - n1])          # the centred output of a layer norm sums to zero
    w, beta, W = sym_vector("w", 3), sym_vector("beta", 3), sym_matrix("W", 2, 3)
    D = sp.diag(*d)
    A = D * (sp.eye(3) + w * sp.ones(1, 3)) * D.inv()
    return [W * A.inv() * (D * n + A * beta) - W * (D * n + beta)]


def _linear_readers(engine, ln) -> list[tuple[torch.fx.Node, bool]]:
    """The linear readers of a layer norm's output (through casts and views): (reader, whether it adds a bias)."""
    out = []
    for n in engine.topo:
        if n.op != "call_function":
            continue
        name = op_name(n)
        if name == "linear" and layer_norm_behind(arg(n, 0, "input")) is ln:
            out.append((n, arg(n, 2, "bias") is not None))
        elif name == "addmm" and layer_norm_behind(arg(n, 1, "mat1")) is ln:
            out.append((n, True))
        elif name in ("matmul", "mm") and layer_norm_behind(n.args[0]) is ln \
                and engine.param_views.get(n.args[1]) is not None:
            users = list(n.users)      # x @ Wᵀ (+ b) written out (Falcon's linear)
            out.append((n, len(users) == 1 and op_name(users[0]) in ("add", "add_") and any(
                engine.param_views.get(a) is not None for a in users[0].args[:2] if isinstance(a, torch.fx.Node))))
    return out


def _seed_shear(sc, node):
    """A layer norm with a gain γ and a bias β whose output only linears read, one of them without a bias: the output
    moves by A = D (I + w 1ᵀ) D⁻¹ (D = diag γ), which fixes the centred part D n, so β <- A β and every reader
    W <- W A⁻¹ (``layernorm_shear``; a block of kind "shear1"). Readers that all have a bias need no such gauge: their
    kernels and β's translation (absorbed by their biases) span it already."""
    shape = node_shape(node)
    gamma, beta = arg(node, 2, "weight"), arg(node, 3, "bias")
    pvg, pvb = sc.param_view(gamma), sc.param_view(beta)
    if shape is None or len(arg(node, 1, "normalized_shape")) != 1 or pvg is None or pvb is None \
            or not pvg.is_whole() or not pvb.is_whole() or pvg.ndim != 1 or pvb.ndim != 1:
        return
    readers = _linear_readers(sc.engine, node)
    if not readers or all(has_bias for _, has_bias in readers):
        return
    d = shape[-1]
    C = np.broadcast_to(np.arange(d), shape)
    leg = Leg(pvb.param, "out", axis=0, coords=np.arange(d), conj=pvg.param, conj_offset=pvg.offset,
              conj_index=np.arange(d))
    p = sc.probe("mult", "shear", C, [leg], describe=f"shear of the output of layer norm {node.name}",
                 tags=("ln_shear",), cites=("layernorm_shear",))
    p.conj[node] = (pvg.param, pvg.offset, np.broadcast_to(np.arange(d), shape))
    sc.tie(C, [len(shape) - 1], "shear1")


@rule("rms_norm", kind="seed")
def seed_rms_norm(sc, node):
    shape = node_shape(node)
    axes = _normalised_axes(node, shape, arg(node, 1, "normalized_shape"))
    _seed_affine(sc, node, axes, arg(node, 2, "weight"), None, "RMS norm")


def batch_norm_training(node) -> bool:
    """``aten.batch_norm`` with training=True (``_native_batch_norm_legit_no_training`` is eval by its name)."""
    return node.target._schema.name.split("::")[-1] == "batch_norm" and bool(arg(node, 5, "training", False))


@rule("batch_norm", "_native_batch_norm_legit_no_training", kind="seed")
def seed_batch_norm(sc, node):
    if batch_norm_training(node):
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


@lemma("batchnorm_eval_shift", "in eval mode a batch norm is affine per channel, y = g (x - m) / s + b: a translation "
       "x + t gives y + (g / s) t, which b <- b - (g / s) t absorbs")
def _bn_eval_shift():
    x, t, g, m, b = sp.symbols("x t g m b", real=True)
    s = sp.Symbol("s", positive=True)
    bn = lambda v, bias: g * (v - m) / s + bias      # noqa: E731
    return [bn(x + t, b) - (bn(x, b) + g / s * t), bn(x + t, b - g / s * t) - bn(x, b)]


@rule("batch_norm", "_native_batch_norm_legit_no_training", kind="add")
def batch_norm_add(ctx, node):
    """Eval mode: a translation constant over the batch and the spatial axes (one value per channel) passes as
    (γ / s) t per channel, and the batch norm's own bias absorbs it (``batchnorm_eval_shift``). Training mode
    normalises by the batch's own statistics, which is another function: a barrier here."""
    L, shape = ctx.state(arg(node, 0, "input")), node_shape(node)
    if L is None or shape is None or batch_norm_training(node):
        return ctx.kill_all("a translation entering a batch norm in training mode (or its gain or bias)")
    L = np.broadcast_to(L, shape)
    if varying_axes(L) - {1}:
        return ctx.kill_all("a translation entering a batch norm that is not one value per channel")
    out = ctx.fresh(L, np.broadcast_to(np.arange(shape[1]).reshape([-1 if a == 1 else 1 for a in range(len(shape))]),
                                       shape))
    out = np.where(L >= 0, out, -1)
    ctx.cite("batchnorm_eval_shift")
    if _absorb_bias(ctx, out, arg(node, 2, "bias"), shape, axis=1):
        return None
    return out


@lemma("batchnorm_eval_scale", "(g/c)(c x - m)/s + b + g m (1/c - 1)/s = g (x - m)/s + b: a per-channel scale of a "
       "batch norm's (eval) input is undone by its gain, its bias taking the running mean's share")
def _bn_eval_scale():
    x, g, m, b = sp.symbols("x g m b", real=True)
    c = sp.Symbol("c", nonzero=True)
    s = sp.Symbol("s", positive=True)
    return [(g / c) * (c * x - m) / s + b + g * m * (1 / c - 1) / s - (g * (x - m) / s + b)]


@rule("batch_norm", "_native_batch_norm_legit_no_training", kind="mult")
def batch_norm_mult(ctx, node):
    """Eval mode: a per-channel scale c (one coordinate per channel, constant over the batch and the spatial axes)
    of the input is undone by the gain, γ <- γ / c ("in" leg), and the bias takes the running mean's share,
    β <- β + γ μ (1/c - 1) / s (an absorbing leg: read off the graph, so the current buffers are used)
    (``batchnorm_eval_scale``). Nothing moves past the norm. Training mode, or a batch norm without gain and bias:
    a barrier."""
    x, shape = arg(node, 0, "input"), node_shape(node)
    C = ctx.state(x)
    if any(ctx.state(a) is not None for a in node.all_input_nodes if a is not x):
        return ctx.kill_all("the group reaches a batch norm's gain, bias or statistics")
    if C is None or shape is None or batch_norm_training(node):
        return ctx.kill_all("a map on a batch norm's input in training mode (the batch statistics undo a scale "
                            "themselves: not derived)")
    pvg, pvb = ctx.param_view(arg(node, 1, "weight")), ctx.param_view(arg(node, 2, "bias"))
    C = np.broadcast_to(C.reshape((1,) * (len(shape) - C.ndim) + C.shape), shape)
    if pvg is None or pvb is None or pvg.ndim != 1 or pvb.ndim != 1:
        return ctx.kill_all("a map on the input of a batch norm without a parameter gain and bias")
    per_channel = np.moveaxis(C, 1, 0).reshape(shape[1], -1)[:, 0]
    on = per_channel[per_channel >= 0]
    if varying_axes(C) - {1} or len(distinct(on)) != len(on):
        return ctx.kill_all("a map on a batch norm's input that is not one coordinate per channel")
    ctx.restrict(per_channel, "scalar")
    ctx.fibres(C, [1])
    coords = np.full(pvg.pshape[0], -1, dtype=np.int64)
    coords[pvg.P.reshape(-1)] = per_channel          # per entry of γ, the coordinate of the channel it scales
    ctx.leg(pvg.param, "in", axis=0, coords=coords, offset=pvg.offset)
    channel_P = np.broadcast_to(pvb.P.reshape([-1 if a == 1 else 1 for a in range(len(shape))]), shape)
    ctx.leg(pvb.param, "absorb", site=node.name, site_index=first_positions(channel_P.reshape(-1), pvb.pshape[0]))
    ctx.cite("batchnorm_eval_scale", C)
    ctx.tag("bn_input_scale", C)
    return None


@rule("rms_norm", "group_norm", kind="add")
def other_norm_add(ctx, node):
    return ctx.kill_all("a translation entering a norm that does not centre its input")


# ---------------------------------------------------------------------------------------------------------------
# the input side: a common positive scale passes a norm at eps = 0


def _tie_input_scale(ctx, node, x, axes, eps, lemma_id: str):
    """The probe's coordinates on ``x`` may only move by c I per normalised vector (c > 0) at eps = 0; the norm's
    output does not move, so nothing is carried past it."""
    if any(ctx.state(a) is not None for a in node.all_input_nodes if a is not x):
        return ctx.kill_all("the group reaches a norm's gain or bias")
    C = ctx.state(x)
    if C is None:
        return None
    if eps is None or eps != 0:
        return ctx.kill_all(f"a map on a norm's input: only a common positive scale passes, and only at eps = 0 "
                            f"(eps = {'the dtype epsilon' if eps is None else eps})")
    shape = node_shape(node)
    C = np.broadcast_to(C.reshape((1,) * (len(shape) - C.ndim) + C.shape), shape)
    ctx.tie(C, axes, "scale")
    ctx.cite(lemma_id, C)
    ctx.tag("norm_scale", C)
    return None


def _pass_rotation(ctx, node, x, axes, gain=None, bias=None, kind: str = "orth"):
    """The rotation twin passes a normalisation: each normalised vector's coordinates become one orthogonal block
    (``kind`` "orth" for an RMS norm, "orth1", fixing the ones vector, for a layer norm), and the output carries them,
    conjugated by the gain when the op applies one; a layer norm's bias β moves with them, β <- D R D⁻¹ β, so that
    γ ⊙ R n + β' = D R D⁻¹ (γ ⊙ n + β) and the readers need no bias."""
    if any(ctx.state(a) is not None for a in node.all_input_nodes if a is not x):
        return ctx.kill_all("the group reaches a norm's gain or bias")
    C = ctx.state(x)
    if C is None:
        return None
    shape = node_shape(node)
    C = np.broadcast_to(C.reshape((1,) * (len(shape) - C.ndim) + C.shape), shape)
    ctx.tie(C, axes, kind)
    ctx.cite("rmsnorm_rotation" if kind == "orth" else "layernorm_rotation", C)
    ctx.tag("stream_rotation", C)
    if gain is None:
        if bias is not None:
            return ctx.kill_all("a layer norm bias without a gain (not derived)")
        return C
    out = conjugate(ctx, C, gain)
    if out is not None and bias is not None and not _move_bias(ctx, C, bias):
        return ctx.kill_all("a layer norm bias the rotation cannot move with the gain")
    return out


def _move_bias(ctx, C, bias) -> bool:
    """β <- D R D⁻¹ β: an "out" leg on the bias, conjugated by the same gain (``ctx.conj_of`` this node)."""
    pvb = ctx.param_view(bias)
    if pvb is None:
        return False
    Pb = np.broadcast_to(pvb.P.reshape((1,) * (C.ndim - pvb.ndim) + pvb.shape), C.shape)
    pshape = ctx.engine.gg.params[pvb.param].shape
    found = param_axis_coords(Pb, C, pshape)
    gain_param, offset, gain_index = ctx.conj_of(ctx.node)
    conj = param_axis_coords(Pb, gain_index, pshape)
    if found is None or conj is None or conj[0] != found[0]:
        return False
    ctx.leg(pvb.param, "out", axis=found[0], coords=found[1], conj=gain_param, conj_offset=offset,
            conj_index=conj[1], part=pvb.fixed(found[0]))
    return True


def conjugate(ctx, C: np.ndarray, gain) -> np.ndarray | None:
    """C (the rotation twin's state) meets a product with ``gain``, a parameter view: the state goes on, seen through
    D = diag(gain) (``gain_conjugation``). None, and the state killed, when ``gain`` is no parameter or takes two
    values where one coordinate sits."""
    pv = ctx.param_view(gain)
    if pv is None:
        ctx.kill_all("a rotation meets a product with a tensor that is not a parameter gain")
        return None
    P = np.broadcast_to(pv.P.reshape((1,) * (C.ndim - pv.ndim) + pv.shape), C.shape)
    # each coordinate must meet one gain entry; axes along which both arrays are broadcast are looked at once
    keep = tuple(slice(0, 1) if sc == 0 and sp_ == 0 else slice(None) for sc, sp_ in zip(C.strides, P.strides))
    Cc, Pc = C[keep], P[keep]
    on = Cc >= 0
    _, rep, inv = groups(Cc[on])
    gains = Pc[on]
    if not np.array_equal(gains[rep][inv], gains):
        ctx.kill_all("a gain that takes two values where one rotated coordinate sits")
        return None
    ctx.set_conj(pv.param, pv.offset, np.where(C >= 0, P, -1))
    ctx.cite("gain_conjugation", C)
    return C


@rule("layer_norm", kind="mult")
def layer_norm_mult(ctx, node):
    x = arg(node, 0, "input")
    axes = _normalised_axes(node, node_shape(node), arg(node, 1, "normalized_shape"))
    if ctx.probe.mode == "orth":
        return _pass_rotation(ctx, node, x, axes, arg(node, 2, "weight"), arg(node, 3, "bias"), kind="orth1")
    return _tie_input_scale(ctx, node, x, axes, arg(node, 4, "eps", 1e-5), "layernorm_scale")


@rule("rms_norm", kind="mult")
def rms_norm_mult(ctx, node):
    x = arg(node, 0, "input")
    axes = _normalised_axes(node, node_shape(node), arg(node, 1, "normalized_shape"))
    if ctx.probe.mode == "orth":
        return _pass_rotation(ctx, node, x, axes, arg(node, 2, "weight"))
    return _tie_input_scale(ctx, node, x, axes, arg(node, 3, "eps", None), "rmsnorm_scale")


@dataclasses.dataclass
class RmsNormalisation(PatternMatch):
    """``x * rsqrt(mean(x ** 2, axes, keepdim=True) + eps)``, written out (as the zoo's and Hugging Face's
    RMSNorm are), recognised as one normalisation of ``x`` over ``axes``."""

    output: torch.fx.Node
    x: torch.fx.Node
    axes: list
    eps: float
    internal: set

    name = "RMS normalisation"

    def apply(self, ctx, node):
        outside = {a for i in self.internal for a in i.all_input_nodes if a not in self.internal and a is not self.x}
        if any(ctx.state(a) is not None for a in outside):
            return ctx.kill_all("the group reaches an RMS normalisation's eps")
        if not ctx.mult:
            return ctx.kill_all("a translation entering a norm that does not centre its input")
        if ctx.probe.mode == "orth":
            return _pass_rotation(ctx, node, self.x, self.axes)
        return _tie_input_scale(ctx, node, self.x, self.axes, self.eps, "rmsnorm_scale")


def _rms_parts(mul: torch.fx.Node):
    """(x, axes, eps, internal) when ``mul`` is x * rsqrt(mean(x ** 2) + eps), else None."""
    for x, r in (mul.args[:2], mul.args[1::-1]):
        if not (isinstance(x, torch.fx.Node) and isinstance(r, torch.fx.Node) and op_name(r) == "rsqrt"):
            continue
        v, eps, internal = r.args[0], 0.0, {mul, r}
        if isinstance(v, torch.fx.Node) and op_name(v) == "add" and isinstance(arg(v, 1, "other"), (int, float)):
            internal.add(v)
            v, eps = v.args[0], float(arg(v, 1, "other"))
        if not (isinstance(v, torch.fx.Node) and op_name(v) == "mean" and arg(v, 2, "keepdim", False)):
            continue
        sq = v.args[0]
        if not (isinstance(sq, torch.fx.Node) and op_name(sq) == "pow" and sq.args[1] == 2
                and strip_casts(sq.args[0]) is strip_casts(x)):
            continue
        shape = node_shape(x)
        dims = arg(v, 1, "dim")
        if shape is None or dims is None:
            continue
        axes = sorted(norm_dim(d, len(shape)) for d in (dims if isinstance(dims, (list, tuple)) else [dims]))
        if axes != list(range(len(shape) - len(axes), len(shape))):
            continue
        internal |= {v, sq}
        return x, axes, eps, internal
    return None


@stream_readers
def rms_inputs(engine):
    """The inputs of every RMS normalisation (aten op or written out): a rotation passes them."""
    for n in engine.topo:
        if n.op == "call_function" and op_name(n) == "rms_norm":
            yield arg(n, 0, "input")
    for node, m in engine.matches.items():
        if isinstance(m, RmsNormalisation) and node is m.output:
            yield m.x


@stream_readers
def layer_norm_inputs(engine):
    """The inputs of every layer norm: a rotation fixing the ones vector passes them."""
    for n in engine.topo:
        if n.op == "call_function" and op_name(n) == "layer_norm":
            yield arg(n, 0, "input")


@pattern("RMS normalisation")
def find_rms_normalisations(engine) -> list[RmsNormalisation]:
    """Every written-out RMS normalisation whose inner nodes feed only the normalisation itself."""
    found = []
    for n in engine.topo:
        if n.op != "call_function" or op_name(n) != "mul" or len(n.args) < 2:
            continue
        parts = _rms_parts(n)
        if parts is None:
            continue
        x, axes, eps, internal = parts
        if any(u not in internal for i in internal - {n} for u in i.users):
            continue
        found.append(RmsNormalisation(n, x, axes, eps, internal))
    return found


# ---------------------------------------------------------------------------------------------------------------
# a tied head after the final norm: the stream scale survives the tie


@lemma("tied_head_scale", "(c E) (g / c * n + b / c) = E (g * n + b): a tied table scaled by c as the stream's writer "
       "is read back by a head whose input gain (and bias) is divided by c")
def _tied_head_scale():
    c = sp.Symbol("c", nonzero=True)
    E, g, n, b = sym_matrix("e", 3, 2), sym_vector("g", 2), sym_vector("n", 2), sym_vector("b", 2)
    y = sp.Matrix([g[i] * n[i] + b[i] for i in range(2)])
    return [(c * E) * (y / c) - E * y]


def _head_input_gain(engine, x):
    """(gain view, bias view or None) when ``x`` (casts stripped) is a normalised tensor times a parameter gain: a
    layer / RMS norm op with its weight, or ``γ * normalised`` written out; else None."""
    x = strip_casts(x)
    if not isinstance(x, torch.fx.Node) or x.op != "call_function":
        return None
    name = op_name(x)
    if name in ("layer_norm", "rms_norm"):
        g = engine.param_views.get(arg(x, 2, "weight"))
        b = engine.param_views.get(arg(x, 3, "bias")) if name == "layer_norm" else None
        return (g, b) if g is not None else None
    if name == "mul" and len(x.args) >= 2:
        for g_node, other in (x.args[:2], x.args[1::-1]):
            g = engine.param_views.get(g_node) if isinstance(g_node, torch.fx.Node) else None
            if g is not None and g.ndim == 1 and engine.param_views.get(other) is None:
                return g, None
    return None


@tied_use("tied_head_scale")
def head_after_a_norm_gain(engine, param, node, legs, kind_of):
    """A tied table E whose only leg moves its feature columns by one common scale c (the stream scale of a
    stream at eps 0) and which is read back as ``linear(x, E[, b])`` with x = γ ⊙ normalised (+ β), x read by
    that head alone: γ and β take 1/c ("in" legs on the scale's coordinates; ``tied_head_scale``)."""
    if node.op != "call_function" or op_name(node) != "linear":
        return None               # a head bias (BERT's) is untouched: (c E)(x / c) + b = E x + b
    head = engine.param_views.get(arg(node, 1, "weight"))
    if head is None or head.param != param or not head.is_whole() or len(legs) != 1:
        return None
    lg = legs[0]
    if lg.role != "out" or lg.axis != 1 or lg.part or lg.conj or lg.coords is None or (lg.coords < 0).any() \
            or set(kind_of(lg.coords).tolist()) != {"scale"}:
        return None
    x = arg(node, 0, "input")
    found = _head_input_gain(engine, x)
    if found is None or any(len(n.users) != 1 for n in (x, strip_casts(x))):
        return None
    out = []
    for pv in found:
        if pv is None:
            continue
        if pv.ndim != 1 or not pv.is_whole() or pv.shape[0] != len(lg.coords):
            return None
        out.append(Leg(pv.param, "in", axis=0, coords=lg.coords.copy(), offset=pv.offset, node=node.name))
    return out
