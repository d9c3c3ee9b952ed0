"""One gauge model from discovery to plan: a :class:`Gauge` is a group acting on a few parameters through its
:class:`Leg` s, with f(g·θ, x) = f(θ, x).

A multiplicative gauge is a product of blocks (kinds: :mod:`gaugec.groups`). Each leg says how one parameter moves:
rows/entries with A ("out"), columns with A^-1 ("in": W <- W A^-1), a gain g <- c (g + offset) - offset ("gain").
Coordinates tied by a contraction with parity 1 take A^-T. An additive gauge is a vector space of translations:
seed legs move by t ("shift": p <- p + 1 (x) t), absorbing biases move by minus the translation that reaches them
("absorb"), read off the graph at the current parameters.

Generators at θ (the tangent vectors, ``GaugePlan.tangent_basis``) are d/dt exp(tX)·θ for a basis X of each block's
Lie algebra and the unit translations for additive gauges.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from gaugec.groups import kind as block_kind


class PlanMismatchError(ValueError):
    """The plan does not match the model (missing parameters, wrong shapes) or the JSON is corrupted."""


def slice_part(p, axis: int, part: tuple):
    """``p`` at the (axis, index) pairs of ``part`` (a view: writes land in ``p``), and ``axis`` counted in it."""
    for k, i in sorted(part, reverse=True):
        p = p.select(k, i)
        axis -= int(k < axis)
    return p, axis


@dataclasses.dataclass
class Leg:
    """How one parameter moves under a gauge.

    role "out":    p <- M p along ``axis`` (the writer side; M built from the blocks)
    role "in":     p <- M^-T p along ``axis`` (the reader side; W <- W M^-1 for a linear)
    role "gain":   p <- m (p + offset) - offset, M diagonal (Gemma-style (offset + w) gains; offset 0: a plain gain)
    role "shift":  p <- p + 1 (x) t, t a free vector over the axes not in ``axes`` (broadcast over ``axes``)
    role "absorb": p <- p - delta, delta read off the tensor ``site`` that reaches the bias (additive absorbers)

    ``conj``: the reader of a rotated, RMS-normalised stream sees the rotation through the norm's gain γ (another
    parameter, which this gauge does not move): M is replaced by D M D⁻¹ with D = diag(γ[conj_index] + conj_offset)
    (γ ⊙ R n = (D R D⁻¹)(γ ⊙ n), lemma ``gain_conjugation``); ``conj_index`` gives γ's flat index per index along
    ``axis``.

    A "shift" leg with ``conj`` broadcasts t along its one axis in ``axes`` weighted by d⁻¹, d = γ[conj_index] +
    conj_offset: p <- p + t ⊗ d⁻¹ (a reader of a LayerNorm's output moved along γ⁻¹, which the centred output
    annihilates: lemma ``layernorm_kernel``).

    ``part``: the leg moves only the slice of the parameter at these (axis, index) pairs (one expert of a stacked
    experts weight); ``axis`` then counts the parameter's axes as usual.

    Which block moves each index along ``axis``: in a plan, ``entries`` [n_axis, 3] = (block, local index, parity),
    block -1 untouched; during discovery, ``coords`` (a global coordinate id per index, -1 untouched), which the
    solver turns into entries once the blocks are known."""

    param: str
    role: str                       # out | in | gain | shift | absorb
    axis: int = 0
    entries: np.ndarray | None = None   # [n_axis, 3]: (block, local, parity), block -1 = untouched
    offset: float = 0.0
    axes: tuple = ()
    site: str = ""
    site_index: np.ndarray | None = None
    node: str = ""
    select: np.ndarray | None = None    # role "shift": which entries of t move (None: all)
    coords: np.ndarray | None = None    # discovery only: global coordinate id per index along axis
    part: tuple = ()                    # ((axis, index), ...): the leg acts on that slice only (one expert)
    conj: str = ""                      # the gain parameter M is conjugated by ("" = none)
    conj_index: np.ndarray | None = None
    conj_offset: float = 0.0

    def slice_of(self, p):
        """The part of ``p`` this leg acts on (a view), and the leg's axis within it."""
        return slice_part(p, self.axis, self.part)

    def part_shape(self, shape: tuple) -> tuple:
        """The shape of the slice this leg acts on (``shape`` without the axes ``part`` fixes). A shift leg's
        ``axes`` count the axes of that slice."""
        fixed = {k for k, _ in self.part}
        return tuple(s for i, s in enumerate(shape) if i not in fixed)

    def shift_dim(self, shape: tuple) -> int:
        if self.select is not None:
            return len(self.select)
        return int(np.prod([s for i, s in enumerate(self.part_shape(shape)) if i not in self.axes], dtype=np.int64))

    def to_dict(self, arrays: list | None = None) -> dict:
        """JSON-ready; with ``arrays`` the index arrays are appended there and stored as their position (a binary
        side file: the discovery memo)."""
        def put(a):
            if arrays is None:
                return a.tolist()
            arrays.append(np.ascontiguousarray(a, dtype=np.int64))
            return len(arrays) - 1

        d = {"param": self.param, "role": self.role, "axis": self.axis, "node": self.node}
        if self.entries is not None:
            d["entries"] = put(self.entries)
        if self.offset:
            d["offset"] = self.offset
        if self.role == "shift":
            d["axes"] = list(self.axes)
            if self.select is not None:
                d["select"] = put(self.select)
        if self.role == "absorb":
            d["site"] = self.site
            d["site_index"] = put(self.site_index)
        if self.part:
            d["part"] = [list(a) for a in self.part]
        if self.conj:
            d["conj"] = {"param": self.conj, "index": put(self.conj_index), "offset": self.conj_offset}
        return d

    @classmethod
    def from_dict(cls, d: dict, arrays: list | None = None) -> "Leg":
        def get(v):
            if v is None:
                return None
            return np.asarray(v if arrays is None else arrays[v], dtype=np.int64)

        e, cj = get(d.get("entries")), d.get("conj") or {}
        return cls(d["param"], d["role"], int(d.get("axis", 0)), None if e is None else e.reshape(-1, 3),
                   float(d.get("offset", 0.0)), tuple(d.get("axes", ())), d.get("site", ""),
                   get(d.get("site_index")), d.get("node", ""), get(d.get("select")),
                   part=tuple((int(a), int(i)) for a, i in d.get("part", ())), conj=cj.get("param", ""),
                   conj_offset=float(cj.get("offset", 0.0)), conj_index=get(cj["index"]) if cj else None)


@dataclasses.dataclass
class Gauge:
    """One gauge family instance: a group G acting on a few parameters with f(g·θ, x) = f(θ, x)."""

    name: str
    family: str
    kind: str                        # "mult" | "add"
    blocks: list[tuple[str, int]]    # (block kind, size): the kinds of gaugec.groups
    legs: list[Leg]
    proof: Any = None                # gaugec.prove.Proof
    additive_dim: int = 0
    numeric_residual: float | None = None
    exact: bool = True
    description: list[str] = dataclasses.field(default_factory=list)

    @property
    def dim(self) -> int:
        if self.kind == "add":
            return self.additive_dim
        return sum(block_kind(k).dim(m) for k, m in self.blocks)

    @property
    def compact(self) -> bool:
        """Every block is compact (a rotation): no norm to balance, no charge; its section is a frame choice."""
        return self.kind == "mult" and all(block_kind(k).compact for k, _ in self.blocks)

    @property
    def params(self) -> list[str]:
        out = []
        for lg in self.legs:
            if lg.param not in out:
                out.append(lg.param)
        return out

    @property
    def group(self) -> str:
        if self.kind == "add":
            return f"R^{self.additive_dim}"
        counts: dict[str, int] = {}
        for k, m in self.blocks:
            label = block_kind(k).label(m)
            counts[label] = counts.get(label, 0) + 1
        return " x ".join(lab if c == 1 else f"{lab}^{c}" for lab, c in counts.items())

    # -- group elements ------------------------------------------------------------------------------------------
    def random_element(self, gen: torch.Generator, spread: float = 10.0, gl_spread: float | None = None):
        """A large random element: scales log-uniform in [1/spread, spread]; GL singular values in
        [1/gl_spread, gl_spread] (default ``spread``), between two random rotations."""
        if self.kind == "add":
            return ("add", torch.randn(self.additive_dim, generator=gen, dtype=torch.float64) * spread)
        ls, gls = math.log(spread), math.log(gl_spread or spread)
        return ("mult", [block_kind(k).random_element(m, gen, ls, gls) for k, m in self.blocks])

    def identity_element(self):
        if self.kind == "add":
            return ("add", torch.zeros(self.additive_dim, dtype=torch.float64))
        return ("mult", [torch.eye(m, dtype=torch.float64) for _, m in self.blocks])

    def algebra_basis(self):
        """(block index, X) for a basis of the Lie algebra of each block."""
        for b, (k, m) in enumerate(self.blocks):
            for X in block_kind(k).algebra_basis(m):
                yield b, X
