"""Linear maps: linear, matmul/mm/bmm, convolution, embedding.

Group: GL(n) on the output axis of a writer (rows and bias), absorbed by the input axis of every reader
(W <- W A^-1). Lemmas: ``linear_writer``, ``linear_reader``, ``bilinear_contract`` (a contraction of two probed
operands pairs A with A^-T: attention Q/K), ``matmul_free_axis`` (a map on an uncontracted axis passes:
attention V/O), ``additive_linear`` (a bias absorbs a translation pushed through a linear).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import sympy as sp
import torch.fx

from gaugec.arrays import distinct
from gaugec.discover.fx import arg, node_shape, norm_dim, op_name, strip_casts, varying_axes
from gaugec.discover.registry import INDEX_RULES, rule
from gaugec.discover.rules.index import ConstantIndex, apply_index_op
from gaugec.discover.state import first_positions, param_axis_coords, row_classes
from gaugec.plan.gauge import Leg
from gaugec.prove.lemmas import lemma, sym_matrix, sym_vector


@lemma("row_shift", "(W + 1 a^T) x + (b + s 1) = W x + b + (a.x + s) 1: a row shift adds a per-sample multiple of "
       "the ones vector")
def _row_shift_lemma():
    W, a, x, b = sym_matrix("w", 3, 2), sym_vector("a", 2), sym_vector("x", 2), sym_vector("b", 3)
    s = sp.Symbol("s")
    one = sp.ones(3, 1)
    return [(W + one * a.T) * x + (b + s * one) - (W * x + b + ((a.T * x)[0] + s) * one)]


@lemma("embedding_writer", "E[i] for a one-hot i is a linear map of E: (E A^T)[i] = A E[i], (E + 1 t^T)[i] = E[i] + t")
def _embedding_lemma():
    E, A, t = sym_matrix("e", 3, 2), sym_matrix("a", 2), sym_vector("t", 2)
    onehot = sp.Matrix([0, 1, 0])
    return [(E * A.T).T * onehot - A * (E.T * onehot), (E + sp.ones(3, 1) * t.T).T * onehot - (E.T * onehot + t)]


def fibre_along(C: np.ndarray, axis: int) -> np.ndarray:
    """The 1-D slice of an array along ``axis`` at index 0 of every other axis."""
    idx = [0] * C.ndim
    idx[axis] = slice(None)
    return C[tuple(idx)]


def view_leg(pv, view_axis: int, coords: np.ndarray, param_shape, role: str, node_name: str = "") -> Leg | None:
    """A leg on the parameter behind view ``pv`` whose ``view_axis`` carries ``coords``."""
    found = param_axis_coords(pv.fibre(view_axis), coords, param_shape)
    if found is None:
        return None
    axis, pc = found
    return Leg(pv.param, role, axis=axis, coords=pc, offset=pv.offset, node=node_name, part=pv.fixed(axis))


def _pshape(ctx, pv):
    return ctx.engine.gg.params[pv.param].shape


# ---------------------------------------------------------------------------------------------------------------
# seeds


def token_labels(shape, axis: int = -1) -> np.ndarray:
    """Labels constant along ``axis`` (the features), one per position of the other axes (a per-token scalar)."""
    axis = axis % len(shape)
    rest = tuple(1 if a == axis else n for a, n in enumerate(shape))
    return np.broadcast_to(np.arange(int(np.prod(rest, dtype=np.int64))).reshape(rest), shape)


def seed_writer(sc, node, W, b, out_axis: int, what: str, w_out_view_axis: int = 0):
    """GL seed on ``out_axis`` of the output of a linear/conv (rows of W, entries of b).

    ``w_out_view_axis``: the axis of the weight view that indexes outputs (0 for linear/conv, 1 for x @ W).
    """
    shape = node_shape(node)
    pvW = sc.param_view(W)
    if pvW is None or shape is None:
        return
    n = shape[out_axis]
    C = np.arange(n).reshape([n if a == out_axis else 1 for a in range(len(shape))])
    C = np.broadcast_to(C, shape)
    pshape = sc.engine.gg.params[pvW.param].shape
    legs = []
    wl = param_axis_coords(pvW.fibre(w_out_view_axis), np.arange(n), pshape)
    if wl is None:
        return
    legs.append(Leg(pvW.param, "out", axis=wl[0], coords=wl[1], part=pvW.fixed(wl[0])))
    pvb = sc.param_view(b)
    bl = None
    if pvb is not None:
        bl = param_axis_coords(pvb.P.reshape(-1), np.arange(n), sc.engine.gg.params[pvb.param].shape)
        if bl is not None:
            legs.append(Leg(pvb.param, "out", axis=bl[0], coords=bl[1], part=pvb.fixed(bl[0])))
    sc.probe("mult", "gl", C, legs, describe=f"GL({n}) on the output of {what} {node.name}",
             cites=("linear_writer",))
    # translations: the row shift W += 1 a^T, b += s 1 (softmax / layer norm / loss absorb it), and the bias's part
    # alone, b += s 1, which survives where W may not move (BERT's tied head; the solver drops it when the row shift
    # or the bias's whole translation survives: it adds no dimension then) ...
    part = pvW.fixed(wl[0])     # one expert's W[e] of a stacked weight: the shift acts on that slice
    # (a conv's rows too: W[:, i, kh, kw] += a, constant along the output channels at every pixel)
    if (out_axis == len(shape) - 1 and len(pshape) - len(part) == 2) or (what == "conv" and not part):
        in_slice = wl[0] - sum(k < wl[0] for k, _ in part)
        legs = [Leg(pvW.param, "shift", axes=(in_slice,), part=part)]
        if pvb is not None and len(sc.engine.gg.params[pvb.param].shape) - len(pvb.fixed(-1)) == 1:
            bias_shift = Leg(pvb.param, "shift", axes=(0,), part=pvb.fixed(-1))
            legs.append(bias_shift)
            sc.probe("add", "row_shift", np.zeros(shape, dtype=np.int64), [dataclasses.replace(bias_shift)],
                     describe=f"uniform shift of the bias of {what} {node.name}", cites=("row_shift",))
        sc.probe("add", "row_shift", token_labels(shape, out_axis), legs, describe=f"row shift of {what} {node.name}",
                 cites=("row_shift",))
    # ... and the bias translation b += t (a later bias or attention softmax absorbs it), one probe per segment
    # when the output is cut along its features (fused QKV: the query part must not take the key part down)
    if pvb is not None and bl is not None:
        out_index = np.arange(n).reshape([n if a == out_axis else 1 for a in range(len(shape))])
        segments = output_segments(sc.engine, node, out_axis, n)
        for seg in segments:
            inside = np.isin(out_index, seg)
            L = np.broadcast_to(np.where(inside, out_index, -1), shape)
            select = None if len(segments) == 1 else np.nonzero(np.isin(bl[1], seg))[0]
            part = "" if select is None else f" [{_ranges(seg)}]"
            sc.probe("add", "translation", L, [Leg(pvb.param, "shift", axes=(), select=select)],
                     describe=f"translation of the bias of {what} {node.name}{part}", cites=("additive_passthrough",))


def _ranges(idx: np.ndarray) -> str:
    """0:8,24:32 for the indices 0..7 and 24..31."""
    cuts = np.nonzero(np.diff(idx) != 1)[0]
    starts, ends = np.r_[idx[:1], idx[cuts + 1]], np.r_[idx[cuts], idx[-1:]] + 1
    return ",".join(f"{a}:{b}" for a, b in zip(starts, ends))


def output_segments(engine, node, axis: int, n: int, depth: int = 8) -> list[np.ndarray]:
    """The parts a later split, chunk, slice, select or constant index cuts the output's features into: the feature
    index is carried through the index ops after ``node`` (views that split it into heads included, as GPT-NeoX's
    per-head [q | k | v] layout), each piece they make records the features it holds, and features that lie in
    exactly the same pieces form one segment (one segment, all features, when nothing cuts)."""
    shape = node_shape(node)
    start = np.broadcast_to(np.arange(n).reshape([n if a == axis else 1 for a in range(len(shape))]), shape)
    signature = np.zeros(n, dtype=np.uint64)
    rng = np.random.default_rng(0x5E6)
    cut_ops = {"split", "split_with_sizes", "chunk", "unbind", "tensor_split", "slice", "narrow", "select"}
    todo = [(u, start, 0) for u in node.users]
    while todo:
        u, arr, level = todo.pop()
        if level >= depth or u.op != "call_function":
            continue
        name, match = op_name(u), engine.matches.get(u)
        try:
            if isinstance(match, ConstantIndex) and match.x is u.args[0]:
                out = arr[match.key]        # a constant index (Falcon's qkv[..., [-2], :])
                cuts = True
            elif match is None and name in INDEX_RULES:
                out = apply_index_op(engine, u, {u.args[0]: arr} if u.args else {}, fill=-1)
                cuts = name in cut_ops
            else:
                continue
        except Exception:  # noqa: BLE001 - an index op this walk cannot follow cuts nothing it can see
            continue
        pieces = list(out) if isinstance(out, tuple) else [out]
        for k, piece in enumerate(pieces):
            if not isinstance(piece, np.ndarray):
                continue
            held = distinct(piece[piece >= 0])
            if cuts and 0 < held.size < n:
                with np.errstate(over="ignore"):
                    signature[held] += rng.integers(1, 2 ** 63, dtype=np.int64).astype(np.uint64)
            if isinstance(out, tuple):      # a getitem picks this piece: carry it to that getitem's users
                nxt = [x for w in u.users if op_name(w) == "getitem" and w.args[1] == k for x in w.users]
            else:
                nxt = list(u.users)
            todo.extend((x, piece, level + 1) for x in nxt)
    _, inv = np.unique(signature, return_inverse=True)
    return [np.nonzero(inv == c)[0] for c in range(int(inv.max()) + 1)]


@rule("linear", kind="seed")
def seed_linear(sc, node):
    seed_writer(sc, node, arg(node, 1, "weight"), arg(node, 2, "bias"), len(node_shape(node)) - 1, "linear")


@rule("addmm", kind="seed")
def seed_addmm(sc, node):
    """addmm(b, x, W) = b + x @ W (Hugging Face Conv1D)."""
    seed_writer(sc, node, arg(node, 2, "mat2"), arg(node, 0, "self"), len(node_shape(node)) - 1, "addmm", 1)


@rule("matmul", "mm", kind="seed")
def seed_matmul_param(sc, node):
    """x @ W with W a parameter (view): a writer of its output columns."""
    if sc.param_view(node.args[1]) is not None and sc.param_view(node.args[0]) is None:
        seed_writer(sc, node, node.args[1], None, len(node_shape(node)) - 1, "matmul", 1)


@rule("convolution", "conv2d", "conv1d", "conv3d", kind="seed")
def seed_conv(sc, node):
    name = node.target._schema.name.split("::")[-1]
    groups = arg(node, 8, "groups", 1) if name == "convolution" else arg(node, 6, "groups", 1)
    transposed = arg(node, 6, "transposed", False) if name == "convolution" else False
    if groups == 1 and not transposed:
        seed_writer(sc, node, arg(node, 1, "weight"), arg(node, 2, "bias"), 1, "conv")


@rule("embedding", kind="seed")
def seed_embedding(sc, node):
    W = arg(node, 0, "weight")
    pv = sc.param_view(W)
    shape = node_shape(node)
    if pv is None or shape is None or pv.ndim != 2:
        return
    d = shape[-1]
    C = np.broadcast_to(np.arange(d), shape)
    sc.probe("mult", "gl", C, [Leg(pv.param, "out", axis=1, coords=np.arange(d))],
             describe=f"GL({d}) on the output of embedding {node.name}", cites=("embedding_writer",))
    p = sc.probe("add", "translation", np.broadcast_to(np.arange(d), shape), [Leg(pv.param, "shift", axes=(0,))],
                 describe=f"translation of every row of embedding {node.name}", cites=("embedding_writer",))
    _start_at_tied_heads(sc, p, pv, node)
    # W_E <- W_E + a 1^T: each token's row moves along the ones direction (a layer norm absorbs it)
    sc.probe("add", "row_shift", token_labels(shape), [Leg(pv.param, "shift", axes=(1,))],
             describe=f"row shift of embedding {node.name}", cites=("embedding_writer",))


def _start_at_tied_heads(sc, probe, pv, node):
    """A translation of every row of an embedding E <- E + 1 tᵀ whose table is read again as a linear head
    (``linear(h, E, b)``, a tied head, with a bias or not) moves that head's output by ⟨h, t⟩ 1 per token (``row_shift``): the probe
    starts there as well, with per-token labels, and the head use counts as covered."""
    for u in sc.engine.topo:
        if u is node or u.op != "call_function" or op_name(u) != "linear" or len(u.args) < 2:
            continue
        head = sc.param_view(u.args[1])
        if head is None or head.param != pv.param:
            continue
        shape = node_shape(u)
        if not head.is_whole() or not pv.is_whole() or shape is None \
                or sc.param_view(u.args[0]) is not None:
            continue
        probe.also[u] = token_labels(shape)
        probe.also_uses.setdefault(pv.param, set()).add(u.name)
        probe.citations.append(("row_shift", u.name, None))


def absorb_by_embedding(ctx, L: np.ndarray, other, shape) -> bool:
    """A translation constant over the tokens meets the sum with another embedding's lookup: that table's rows take
    it, E' <- E' - 1 tᵀ (``embedding_writer``), when the lookup feeds only this sum and comes after the
    translation's seed in the graph (so the token and position tables do not both find the one gauge)."""
    emb = strip_casts(other)
    if not (isinstance(emb, torch.fx.Node) and op_name(emb) == "embedding") or len(emb.users) != 1 \
            or (emb is not other and len(other.users) != 1):
        return False
    pv = ctx.param_view(arg(emb, 0, "weight"))
    eshape = node_shape(emb)
    if pv is None or pv.ndim != 2 or pv.fixed(-1) or eshape is None or eshape[-1] != shape[-1] \
            or ctx.engine.index[emb] <= ctx.engine.index[ctx.probe.node]:
        return False
    lead = L.reshape(-1, L.shape[-1])
    if not (lead == lead[:1]).all():
        return False                    # not constant over the tokens
    # every row r, feature j of the table is compensated by the change at the first token's feature j
    rows, d = pv.pshape
    ctx.leg(pv.param, "absorb", site=ctx.node.name, site_index=np.tile(np.arange(d), rows), at=emb)
    ctx.cite("embedding_writer")
    ctx.sink(f"embedding {pv.param}")
    return True


# ---------------------------------------------------------------------------------------------------------------
# propagation


def _absorb_bias(ctx, L: np.ndarray, b, out_shape, axis: int | None = None, at=None) -> bool:
    """Additive probe meets a bias: absorbed when the translation has the bias's shape (b <- b - delta). The bias is
    broadcast against the trailing axes, or (``axis``, a 1-D bias) along that axis (a batch norm's channels). ``at``:
    the node that reads the bias when it is not this one (the delta is still measured here)."""
    pvb = ctx.param_view(b)
    if pvb is None or (axis is not None and pvb.ndim != 1):
        return False
    Pb = pvb.P
    if axis is not None:
        Pb = Pb.reshape([-1 if a == axis else 1 for a in range(len(out_shape))])
    P = np.broadcast_to(Pb.reshape((1,) * (len(out_shape) - Pb.ndim) + Pb.shape), out_shape)
    flatP, flatL = P.reshape(-1), L.reshape(-1)
    _, firstP, invP = np.unique(flatP, return_index=True, return_inverse=True)
    if not np.array_equal(flatL[firstP][invP.reshape(-1)], flatL):
        return False   # one bias element would need two different corrections
    first = first_positions(flatP, int(np.prod(pvb.pshape, dtype=np.int64)))
    ctx.leg(pvb.param, "absorb", at=at, site=ctx.node.name, site_index=first)
    ctx.cite("additive_linear")
    ctx.sink(f"bias {pvb.param}")
    return True


def read_with_weight(ctx, C, pvW, act_axis: int, w_axis: int, what: str, x=None):
    """A parameter reader absorbs the action on ``act_axis`` of its input: W <- W A^-1 along the weight view's
    ``w_axis`` (``linear_reader``). The action may sit on that axis only."""
    if varying_axes(C) - {act_axis}:
        return ctx.kill_all(f"the group acts on axes of a {what}'s input other than its features")
    ctx.fibres(C, [act_axis])
    lg = view_leg(pvW, w_axis, fibre_along(C, act_axis), _pshape(ctx, pvW), "in", ctx.node.name)
    if lg is None:
        return ctx.kill_all(f"could not map the {what}'s input axis to a weight axis")
    if not _conjugate_leg(ctx, lg, pvW, w_axis, x, act_axis):
        return ctx.kill_all(f"could not map the gain conjugating a {what}'s input to its weight axis")
    ctx.probe.legs.append(lg)
    ctx.cite("linear_reader")
    ctx.tag("reader")
    return None


def _conjugate_leg(ctx, lg, pvW, w_axis: int, x, act_axis: int) -> bool:
    """A map seen through a norm gain on the reader's input ``x`` (a rotation or a shear, D M D⁻¹): the reader's leg
    takes the same conjugation, W <- W D M⁻¹ D⁻¹ (``gain_conjugation``). False when the gain's index does not map to
    the leg's weight axis; True (nothing to do) when ``x`` carries no conjugation."""
    conj = ctx.conj_of(x)
    if conj is None:
        return True
    found = param_axis_coords(pvW.fibre(w_axis), fibre_along(conj[2], act_axis), _pshape(ctx, pvW))
    if found is None or found[0] != lg.axis:
        return False
    lg.conj, lg.conj_offset, lg.conj_index = conj[0], conj[1], found[1]
    ctx.cite("gain_conjugation")
    return True


@rule("linear", kind="mult", conjugated=True)
def linear_mult(ctx, node):
    x = arg(node, 0, "input")
    C, pvW = ctx.state(x), ctx.param_view(arg(node, 1, "weight"))
    if C is None or pvW is None:
        return ctx.kill_all("a linear whose weight is an activation or carries the group")
    return read_with_weight(ctx, C, pvW, C.ndim - 1, 1, "linear", x)


@rule("addmm", kind="mult", conjugated=True)
def addmm_mult(ctx, node):
    C, pvW = ctx.state(arg(node, 1, "mat1")), ctx.param_view(arg(node, 2, "mat2"))
    if C is None or pvW is None or ctx.state(arg(node, 0, "self")) is not None:
        return ctx.kill_all("an addmm whose weight or bias carries the group")
    return read_with_weight(ctx, C, pvW, C.ndim - 1, 0, "addmm", arg(node, 1, "mat1"))


@rule("addmm", kind="add")
def addmm_add(ctx, node):
    return _linear_translation(ctx, node, arg(node, 1, "mat1"), arg(node, 2, "mat2"), arg(node, 0, "self"))


@rule("linear", kind="add")
def linear_add(ctx, node):
    return _linear_translation(ctx, node, arg(node, 0, "input"), arg(node, 1, "weight"), arg(node, 2, "bias"))


def _linear_translation(ctx, node, x, W, b):
    """delta' = W delta per row: labels by (class of the row's labels, output index); a bias may absorb it."""
    L = ctx.state(x)
    if L is None or ctx.param_view(W) is None:
        return ctx.kill_all("a linear whose weight carries the translation")
    out_shape = node_shape(node)
    lead = L.reshape(-1, L.shape[-1])
    cls = row_classes(lead).reshape(L.shape[:-1] + (1,))
    nonzero = (lead >= 0).any(axis=1).reshape(L.shape[:-1] + (1,))
    out = ctx.fresh(np.where(nonzero, cls, -1), np.broadcast_to(np.arange(out_shape[-1]), out_shape))
    out = np.where(np.broadcast_to(nonzero, out_shape), out, -1)
    ctx.cite("additive_linear")
    if b is not None and _absorb_bias(ctx, out, b, out_shape):
        return None
    return out


@rule("matmul", "mm", "bmm", kind="mult", conjugated=True)
def matmul_mult(ctx, node):
    """x @ W with W a parameter (view) reads the action on the contracted axis like a linear (a gain-conjugated one
    too: Falcon's linear is written x @ Wᵀ); two activations contract it (attention scores) or carry it on the free
    axis (attention values). A conjugated action only passes the parameter reader."""
    a, b = node.args[0], node.args[1]
    Ca, Cb = ctx.state(a), ctx.state(b)
    sa, sb, so = node_shape(a), node_shape(b), node_shape(node)
    if len(sa) < 2 or len(sb) < 2:
        return ctx.kill_all("matmul with a vector operand")
    out = None
    for side, C, other in (("a", Ca, b), ("b", Cb, a)):
        if C is None:
            continue
        k_axis = C.ndim - 1 if side == "a" else C.ndim - 2
        if ctx.conj_of(a if side == "a" else b) is not None and (
                ctx.param_view(other) is None or k_axis not in varying_axes(C)):
            ctx.kill(C, "a map seen through a norm gain (D M D^-1) reaches a matmul other than a parameter reader "
                        "of its features")
            continue
        free_axis = C.ndim - 2 if side == "a" else C.ndim - 1
        var = varying_axes(C)
        if k_axis in var:
            if free_axis in var:
                ctx.kill(C, "the group acts on both the contracted and the free axis of a matmul")
                continue
            pv = ctx.param_view(other)
            if pv is not None:
                if var - {k_axis}:
                    ctx.kill(C, "a parameter reader of a batched action")
                    continue
                ctx.fibres(C, [k_axis])
                other_axis = pv.ndim - 2 if side == "a" else pv.ndim - 1
                lg = view_leg(pv, other_axis, fibre_along(C, k_axis), _pshape(ctx, pv), "in", node.name)
                if lg is None:
                    ctx.kill(C, "could not map the contracted axis to a weight axis")
                    continue
                if not _conjugate_leg(ctx, lg, pv, other_axis, a if side == "a" else b, k_axis):
                    ctx.kill(C, "could not map the gain conjugating a matmul's input to its weight axis")
                    continue
                ctx.probe.legs.append(lg)
                ctx.cite("linear_reader")
                ctx.tag("reader")
            else:
                ctx.fibres(C, [k_axis])
                # align to [*batch, k]: drop the free axis (C is constant along it)
                ctx.half_edge(side, np.take(C, 0, axis=free_axis))
                ctx.cite("bilinear_contract")
                ctx.tag("attn_qk", C)
        else:
            # the action sits on the free axis (and batch axes): it passes to the output
            ctx.fibres(C, [free_axis])
            Cf = np.take(C, 0, axis=k_axis)   # [*batch, free]
            if side == "a":
                res = np.expand_dims(Cf, -1)
            else:
                res = np.expand_dims(Cf, -2)
            res = np.broadcast_to(res.reshape((1,) * (len(so) - res.ndim) + res.shape), so)
            ctx.cite("matmul_free_axis")
            ctx.tag("attn_vo" if side == "b" else "matmul_free", C)
            if out is not None:
                ctx.kill(res, "the same group reaches both free axes of a matmul")
                continue
            out = res
    return out


@rule("matmul", "mm", "bmm", kind="add")
def matmul_add(ctx, node):
    a, b = node.args[0], node.args[1]
    La, Lb = ctx.state(a), ctx.state(b)
    so = node_shape(node)
    if La is not None and Lb is not None:
        return ctx.kill_all("a translation on both operands of a matmul")
    if Lb is not None:
        k_axis = Lb.ndim - 2
        if k_axis not in varying_axes(Lb) and _row_stochastic(ctx, a):
            # sum_j a_ij (v_j + t) = sum_j a_ij v_j + t when every row of a sums to one
            ctx.cite("value_bias_rows")
            ctx.tag("attn_value_translation")
            res = np.take(Lb, 0, axis=k_axis)[..., None, :]
            return np.broadcast_to(res.reshape((1,) * (len(so) - res.ndim) + res.shape), so)
        # generic: delta' = a @ delta varies with a's free axis and with the class of delta's column
        # (q @ (k + t)^T: a per-query constant over keys, which a softmax over keys absorbs)
        ctx.tag("key_translation")
        cols = np.moveaxis(Lb, -1, 0).reshape(Lb.shape[-1], -1)
        cls = row_classes(cols)
        m = so[-2]
        out = ctx.fresh(np.broadcast_to(np.arange(m)[:, None], so),
                        np.broadcast_to(cls.reshape(-1)[None, :], so))
        ctx.cite("additive_passthrough")
        return out
    # translation on the left operand: delta' = delta @ b varies along b's free axis, with the class of delta's row
    rows = La.reshape(-1, La.shape[-1])
    cls = row_classes(rows).reshape(La.shape[:-1] + (1,))
    n = so[-1]
    out = ctx.fresh(np.broadcast_to(cls.reshape((1,) * (len(so) - cls.ndim) + cls.shape), so),
                    np.broadcast_to(np.arange(n), so))
    ctx.cite("additive_passthrough")
    return out


def _row_stochastic(ctx, a) -> bool:
    """Is ``a`` a softmax over its last axis (possibly cast, copied or passed through eval dropout)?"""

    seen = 0
    while seen < 8:
        seen += 1
        name = op_name(a)
        if name in ("softmax", "_softmax") and norm_dim(arg(a, 1, "dim"), len(node_shape(a))) == len(node_shape(a)) - 1:
            return True
        if name in ("_to_copy", "to", "clone", "contiguous", "dropout", "type_as", "alias", "detach"):
            a = a.args[0]
            continue
        return False
    return False


@rule("convolution", "conv2d", "conv1d", "conv3d", kind="mult")
def conv_mult(ctx, node):
    C, pvW = ctx.state(arg(node, 0, "input")), ctx.param_view(arg(node, 1, "weight"))
    name = node.target._schema.name.split("::")[-1]
    groups = arg(node, 8, "groups", 1) if name == "convolution" else arg(node, 6, "groups", 1)
    if C is None or pvW is None or groups != 1:
        return ctx.kill_all("a grouped convolution, or one whose weight carries the group")
    return read_with_weight(ctx, C, pvW, 1, 1, "convolution")


@rule("convolution", "conv2d", "conv1d", "conv3d", "embedding", kind="add")
def conv_add(ctx, node):
    return ctx.kill_all("a translation entering a convolution or an embedding (not tracked)")


@rule("embedding", kind="mult")
def embedding_mult(ctx, node):
    return ctx.kill_all("the group reaches embedding indices")
