"""Rotary position embeddings, recognised in the graph as ``x * cos + rotate_half(x) * sin`` or, written with complex
numbers (Llama-4, DeepSeek-V2), as ``view_as_real(view_as_complex(x.reshape(..., d/2, 2)) * freqs_cis)``.

rotate_half pairs coordinate i with a partner j (half-split: j = i + d/2; interleaved: j = i + 1 for even i), and
the op applies R(s θ_p) to each pair at position s. A map A on x survives iff it commutes with every R(s θ_p): the
commutant, one scaled 2x2 rotation a I + b J per pair (``rope_commutant``: R(φ) (s R(ψ)) = (s R(ψ)) R(φ)). Partial
rotary slices the head first, so the non-rotary part keeps its full GL. A translation does not survive: it rotates
with the position.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import sympy as sp
import torch.fx

from gaugec.discover.fx import arg, node_shape, norm_dim, op_name, strip_casts
from gaugec.discover.registry import PatternMatch, pattern
from gaugec.prove.lemmas import lemma


@lemma("rope_commutant", "R(φ) (s R(ψ)) = (s R(ψ)) R(φ): scaled rotations commute with every rotary angle")
def _rope_commutant():
    phi, psi = sp.symbols("phi psi", real=True)
    s = sp.Symbol("s", positive=True)

    def R(t):
        return sp.Matrix([[sp.cos(t), -sp.sin(t)], [sp.sin(t), sp.cos(t)]])

    return [R(phi) * (s * R(psi)) - (s * R(psi)) * R(phi)]


@lemma("rope_half_split", "x cos + rotate_half(x) sin applies R(θ) to each pair (x_i, x_{i+d/2})")
def _rope_half():
    x0, x1, c, s = sp.symbols("x0 x1 c s", real=True)
    x = sp.Matrix([x0, x1])
    rot_half = sp.Matrix([-x1, x0])
    R = sp.Matrix([[c, -s], [s, c]])
    return [x * c + rot_half * s - R * x]


@lemma("rope_complex", "multiplying x0 + i x1 by a + i b applies the scaled rotation [[a, -b], [b, a]] to (x0, x1)")
def _rope_complex():
    x0, x1, a, b = sp.symbols("x0 x1 a b", real=True)
    z = (x0 + sp.I * x1) * (a + sp.I * b)
    M = sp.Matrix([[a, -b], [b, a]])
    return [sp.Matrix([sp.re(z), sp.im(z)]) - M * sp.Matrix([x0, x1])]


@dataclasses.dataclass
class RopeMacro(PatternMatch):
    """q * cos + rotate_half(q) * sin, recognised as one rotary op on ``x`` along ``axis``."""

    output: torch.fx.Node  # the final add
    x: torch.fx.Node
    axis: int
    pairs: list            # (i, j): positions along axis rotated together, J e_i = e_j
    style: str             # "half" | "interleaved" | "complex"
    internal: set

    name = "rotary embedding"

    def apply(self, ctx, node):
        return rope_rule(ctx, node, self)


def _mul_operands(n):
    if not hasattr(n, "op") or op_name(n) not in ("mul", "mul_"):
        return None
    a, b = n.args[0], n.args[1]
    if not (hasattr(a, "op") and hasattr(b, "op")):
        return None
    return a, b


def _slice_info(n):
    """(source, dim, start, end, step) for a slice node."""
    if not hasattr(n, "op") or op_name(n) != "slice":
        return None
    shape = node_shape(n.args[0])
    if not shape:           # a slice of a 0-d or non-tensor node: no rotate_half
        return None
    dim = norm_dim(arg(n, 1, "dim", 0), len(shape))
    size = shape[dim]
    start = arg(n, 2, "start", 0) or 0
    end = arg(n, 3, "end", None)
    end = size if end is None else min(end, size)
    return n.args[0], dim, start, end, arg(n, 4, "step", 1)


def _match_rotate_half(r, x):
    """Return (pairs, style, internal nodes) if r == rotate_half(x), else None."""
    internal = {r}
    shape = node_shape(x)
    if shape is None:
        return None
    d = shape[-1]
    last = len(shape) - 1
    if op_name(r) in ("cat", "concat") and len(r.args[0]) == 2 and norm_dim(arg(r, 1, "dim", 0), len(shape)) == last:
        parts = []
        for p in r.args[0]:
            neg = False
            if hasattr(p, "op") and op_name(p) == "neg":
                internal.add(p)
                p, neg = p.args[0], True
            info = _slice_info(p)
            if info is None or strip_casts(info[0]) is not strip_casts(x) or info[1] != last or info[4] != 1:
                return None
            internal.add(p)
            parts.append((info[2], info[3], neg))
        h = d // 2
        if d % 2 or sorted((a, b) for a, b, _ in parts) != [(0, h), (h, d)]:
            return None
        if parts[0][:2] != (h, d) or parts[0][2] == parts[1][2]:
            return None
        return [(i, i + h) for i in range(h)], "half", internal
    if op_name(r) in ("view", "reshape", "_unsafe_view", "flatten") and node_shape(r) == shape:
        st = r.args[0]
        if not hasattr(st, "op") or op_name(st) != "stack" or len(st.args[0]) != 2:
            return None
        internal.add(st)
        parts = []
        for p in st.args[0]:
            neg = False
            if hasattr(p, "op") and op_name(p) == "neg":
                internal.add(p)
                p, neg = p.args[0], True
            info = _slice_info(p)
            if info is None or strip_casts(info[0]) is not strip_casts(x) or info[1] != last or info[4] != 2:
                return None
            internal.add(p)
            parts.append((info[2], neg))
        if d % 2 or [s for s, _ in parts] != [1, 0] or parts[0][1] == parts[1][1]:
            return None
        return [(i, i + 1) for i in range(0, d, 2)], "interleaved", internal
    return None


@pattern("rotary embedding")
def find_rope_macros(engine) -> list[RopeMacro]:
    """Every ``x cos + rotate_half(x) sin`` whose internal nodes feed only the op itself."""
    found_macros = []
    for n in engine.topo:
        if n.op != "call_function" or op_name(n) not in ("add", "add_") or len(n.args) < 2:
            continue
        m1, m2 = _mul_operands(n.args[0]), _mul_operands(n.args[1])
        if m1 is None or m2 is None:
            continue
        found = None
        for (mc, ms) in ((n.args[0], n.args[1]), (n.args[1], n.args[0])):
            for x, c in (mc.args[:2], mc.args[1::-1]):
                for r, s in (ms.args[:2], ms.args[1::-1]):
                    if not hasattr(r, "op") or x in engine.param_views or c in engine.param_views \
                            or s in engine.param_views:
                        continue
                    m = _match_rotate_half(r, x)
                    if m is not None:
                        found = (x, m, {mc, ms})
                        break
                if found:
                    break
            if found:
                break
        if not found:
            continue
        x, (pairs, style, internal), muls = found
        internal = internal | muls
        # every internal node must feed only the macro
        if any(u not in internal and u is not n for i in internal for u in i.users):
            continue
        found_macros.append(RopeMacro(n, x, len(node_shape(x)) - 1, pairs, style, internal | {n}))
    return found_macros + _complex_macros(engine)


def _complex_macros(engine) -> list[RopeMacro]:
    """``view_as_real(view_as_complex(x) * c)``: x is [..., m, 2] and each (re, im) pair on its last axis is rotated
    (scaled) by the complex constant c; the internal nodes must feed only the macro."""
    found = []
    for n in engine.topo:
        if n.op != "call_function" or op_name(n) != "view_as_real":
            continue
        m = _mul_operands(n.args[0])
        if m is None:
            continue
        for z, c in (m, m[::-1]):
            if op_name(z) == "view_as_complex" and c not in engine.param_views and op_name(c) != "view_as_complex":
                break
        else:
            continue
        x = z.args[0]
        internal = {z, n.args[0]}
        if node_shape(x) is None or any(u not in internal and u is not n for i in internal for u in i.users):
            continue
        found.append(RopeMacro(n, x, len(node_shape(x)) - 1, [(0, 1)], "complex", internal | {n}))
    return found


def rope_rule(ctx, node, macro: RopeMacro):
    # anything the probe reaches inside the op other than x (cos, sin, or a tensor they are built from) is a barrier
    outside = {a for i in macro.internal for a in i.all_input_nodes
               if a not in macro.internal and a is not macro.x}
    for a in outside:
        if ctx.state(a) is not None:
            ctx.kill(ctx.state(a), "the group reaches the rotary angles")
    C = ctx.state(macro.x)
    if C is None:
        return None
    if not ctx.mult:
        ctx.kill(C, "a translation rotates with the position under RoPE")
        return None
    so = node_shape(node)
    C = np.broadcast_to(C.reshape((1,) * (len(so) - C.ndim) + C.shape), so)
    ctx.fibres(C, [-2, -1] if macro.style == "complex" else [-1])    # the head: all its pairs
    first = np.stack([C[..., i] for i, _ in macro.pairs], -1).reshape(-1)
    second = np.stack([C[..., j] for _, j in macro.pairs], -1).reshape(-1)
    pairs = np.unique(np.stack([first, second], 1), axis=0)
    both = (pairs[:, 0] >= 0) & (pairs[:, 1] >= 0)
    ctx.cons.kinds.append(("rot2", pairs[both]))
    half = pairs[~both & ((pairs[:, 0] >= 0) | (pairs[:, 1] >= 0))]
    ctx.cons.kill(half, "a rotary pair only half acted on", node.name)
    if macro.style == "half":
        ctx.cite("rope_half_split", C)
    elif macro.style == "complex":
        ctx.cite("rope_complex", C)
    ctx.cite("rope_commutant", C)
    ctx.tag("rope", C)
    return C
