"""The gauge plan: proven gauges as data, with their group actions and generators.

A multiplicative gauge is a product of blocks, each a matrix group acting on a few coordinates:
  gl     GL(m)                 A (m x m invertible)
  rot2   R+ x SO(2)            a I + b J on a rotary pair (the RoPE commutant)
  scalar R*                    c != 0 on one coordinate
  pos    R+                    c > 0 on one coordinate
Each leg says how one parameter moves: rows/entries with A ("out"), columns with A^-1 ("in": W <- W A^-1),
a gain g <- c (g + offset) - offset ("gain"). Coordinates tied by a contraction with parity 1 take A^-T.

An additive gauge is a vector space of translations: seed legs move by t ("shift": p <- p + 1 (x) t), absorbing
biases move by minus the translation that reaches them ("absorb"), read off the graph at the current parameters.

Generators at θ (the tangent vectors, ``tangent_basis``) are d/dt exp(tX)·θ for a basis X of each block's Lie
algebra (E_ij for gl; I, J for rot2; 1 for scalars) and the unit translations for additive gauges.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch


class PlanMismatchError(ValueError):
    """The plan does not match the model (missing parameters, wrong shapes) or the JSON is corrupted."""


@dataclasses.dataclass
class PlanLeg:
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

    def shift_dim(self, shape: tuple) -> int:
        if self.select is not None:
            return len(self.select)
        return int(np.prod([s for i, s in enumerate(shape) if i not in self.axes], dtype=np.int64))

    def to_dict(self) -> dict:
        d = {"param": self.param, "role": self.role, "axis": self.axis, "node": self.node}
        if self.entries is not None:
            d["entries"] = self.entries.tolist()
        if self.offset:
            d["offset"] = self.offset
        if self.role == "shift":
            d["axes"] = list(self.axes)
            if self.select is not None:
                d["select"] = self.select.tolist()
        if self.role == "absorb":
            d["site"] = self.site
            d["site_index"] = self.site_index.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PlanLeg":
        e, si, sel = d.get("entries"), d.get("site_index"), d.get("select")
        return cls(d["param"], d["role"], int(d.get("axis", 0)),
                   None if e is None else np.asarray(e, dtype=np.int64).reshape(-1, 3),
                   float(d.get("offset", 0.0)), tuple(d.get("axes", ())), d.get("site", ""),
                   None if si is None else np.asarray(si, dtype=np.int64), d.get("node", ""),
                   None if sel is None else np.asarray(sel, dtype=np.int64))


BLOCK_DIM = {"gl": lambda m: m * m, "rot2": lambda m: 2, "scalar": lambda m: 1, "pos": lambda m: 1}


@dataclasses.dataclass
class Gauge:
    """One gauge family instance: a group G acting on a few parameters with f(g·θ, x) = f(θ, x)."""

    name: str
    family: str
    kind: str                        # "mult" | "add"
    blocks: list[tuple[str, int]]    # (block kind, size)
    legs: list[PlanLeg]
    proof: Any = None                # gaugec.prove.Proof
    additive_dim: int = 0
    numeric_residual: float | None = None
    exact: bool = True
    description: list[str] = dataclasses.field(default_factory=list)

    @property
    def dim(self) -> int:
        if self.kind == "add":
            return self.additive_dim
        return sum(BLOCK_DIM[k](m) for k, m in self.blocks)

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
            label = {"gl": f"GL({m})", "rot2": "(R+ x SO(2))", "scalar": "R*", "pos": "R+"}[k]
            counts[label] = counts.get(label, 0) + 1
        return " x ".join(lab if c == 1 else f"{lab}^{c}" for lab, c in counts.items())

    # -- group elements ------------------------------------------------------------------------------------------
    def random_element(self, gen: torch.Generator, spread: float = 10.0, gl_spread: float | None = None):
        """A large random element: scales log-uniform in [1/spread, spread]; GL singular values in
        [1/gl_spread, gl_spread] (default ``spread``), between two random rotations."""
        ls = math.log(spread)

        def u(*shape, log_spread=ls):
            return (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * log_spread

        if self.kind == "add":
            return ("add", torch.randn(self.additive_dim, generator=gen, dtype=torch.float64) * spread)
        mats = []
        for k, m in self.blocks:
            if k == "gl":
                q1, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
                q2, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
                mats.append(q1 @ torch.diag(torch.exp(u(m, log_spread=math.log(gl_spread or spread)))) @ q2)
            elif k == "rot2":
                s = torch.exp(u(1))[0]
                phi = float(torch.rand(1, generator=gen, dtype=torch.float64)[0]) * 2 * math.pi
                mats.append(s * torch.tensor([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]],
                                             dtype=torch.float64))
            elif k == "scalar":
                sign = 1.0 if float(torch.rand(1, generator=gen)[0]) < 0.5 else -1.0
                mats.append(sign * torch.exp(u(1, 1)))
            else:
                mats.append(torch.exp(u(1, 1)))
        return ("mult", mats)

    def identity_element(self):
        if self.kind == "add":
            return ("add", torch.zeros(self.additive_dim, dtype=torch.float64))
        return ("mult", [torch.eye(m, dtype=torch.float64) for _, m in self.blocks])

    def algebra_basis(self):
        """(block index, X) for a basis of the Lie algebra of each block."""
        for b, (k, m) in enumerate(self.blocks):
            if k == "gl":
                for i in range(m):
                    for j in range(m):
                        X = torch.zeros(m, m, dtype=torch.float64)
                        X[i, j] = 1.0
                        yield b, X
            elif k == "rot2":
                yield b, torch.eye(2, dtype=torch.float64)
                yield b, torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
            else:
                yield b, torch.ones(1, 1, dtype=torch.float64)


def _groups(entries: np.ndarray):
    """Per block: lists of (positions, locals) copies; a copy holds each local index at most once."""
    out: dict[int, list] = {}
    blocks = entries[:, 0]
    for b in np.unique(blocks[blocks >= 0]):
        pos = np.nonzero(blocks == b)[0]
        copies: list[tuple[list, list, int]] = []
        seen_count: dict[int, int] = {}
        for p in pos:
            loc = int(entries[p, 1])
            c = seen_count.get(loc, 0)
            seen_count[loc] = c + 1
            while len(copies) <= c:
                copies.append(([], [], int(entries[p, 2])))
            copies[c][0].append(int(p))
            copies[c][1].append(loc)
            if copies[c][2] != int(entries[p, 2]):
                raise PlanMismatchError("a leg mixes a block and its dual within one copy")
        out[int(b)] = copies
    return out


def apply_mult_leg(p: torch.Tensor, leg: PlanLeg, mats: list[torch.Tensor], tangent: bool = False) -> torch.Tensor:
    """Return the moved parameter (or, with tangent=True and mats = Lie algebra elements, the tangent)."""
    x = p.detach().to(torch.float64).movedim(leg.axis, 0)
    flat = x.reshape(x.shape[0], -1)
    out = torch.zeros_like(flat) if tangent else flat.clone()
    for b, copies in _groups(leg.entries).items():
        A = mats[b]
        if A is None:
            continue
        for pos, loc, parity in copies:
            if sorted(loc) != list(range(A.shape[0])):
                raise PlanMismatchError(f"leg {leg.param} covers part of a block (locals {sorted(loc)})")
            M = A[loc][:, loc]
            if parity:
                M = -M.T if tangent else torch.linalg.inv(A).T[loc][:, loc]
            idx = torch.tensor(pos)
            if leg.role == "out":
                out[idx] = M @ flat[idx]
            elif leg.role == "in":
                out[idx] = (-M.T if tangent else torch.linalg.inv(M).T) @ flat[idx]
            elif leg.role == "gain":
                d = torch.diagonal(M)
                if tangent:
                    out[idx] = d[:, None] * (flat[idx] + leg.offset)
                else:
                    out[idx] = d[:, None] * (flat[idx] + leg.offset) - leg.offset
            else:
                raise PlanMismatchError(f"unknown role {leg.role!r} for a multiplicative leg")
    return out.reshape(x.shape).movedim(0, leg.axis)


def shift_from_vector(shape: tuple, axes: tuple, vec: torch.Tensor, select=None) -> torch.Tensor:
    """1 (x) t over the broadcast ``axes``; with ``select``, vec fills only those entries of t (the rest stay 0)."""
    free = [i for i in range(len(shape)) if i not in axes]
    if select is not None:
        full = torch.zeros(int(np.prod([shape[i] for i in free], dtype=np.int64)), dtype=vec.dtype)
        full[torch.as_tensor(select)] = vec
        vec = full
    t = vec.reshape([shape[i] for i in free]) if free else vec.reshape(())
    for a in sorted(axes):
        t = t.unsqueeze(a)
    return t.expand(shape).clone()
