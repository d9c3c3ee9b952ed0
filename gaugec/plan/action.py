"""Group elements acting on parameters: a multiplicative leg moved by its blocks' matrices (or their Lie-algebra
elements, for tangents), and the broadcast shift of an additive leg."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from gaugec.plan.gauge import Leg, PlanMismatchError


def groups_of_entries(entries: np.ndarray):
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


def conj_gain(leg: Leg, params: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The gain values d_i = γ[conj_index[i]] + offset a conjugated leg sees along its axis (None: not conjugated).
    A zero gain makes D R D⁻¹ undefined, and the rotation is then no symmetry: a clear error, never a guess."""
    if not leg.conj:
        return None
    gamma = params[leg.conj].detach().to(torch.float64).reshape(-1).cpu()
    idx = torch.as_tensor(leg.conj_index)
    d = torch.ones(len(idx), dtype=torch.float64)
    d[idx >= 0] = gamma[idx[idx >= 0]] + leg.conj_offset
    if not bool(torch.isfinite(d).all()) or bool((d == 0).any()):
        raise ValueError(f"the gauge's leg on {leg.param} reads the gain {leg.conj}, which has a zero or non-finite "
                         f"entry: the action is not defined (not a symmetry) at these parameters")
    return d


def apply_mult_leg(p: torch.Tensor, leg: Leg, mats: list[torch.Tensor], tangent: bool = False,
                   gain: torch.Tensor | None = None) -> torch.Tensor:
    """Return the moved parameter (or, with tangent=True and mats = Lie algebra elements, the tangent). ``gain``:
    :func:`conj_gain` of a conjugated leg (its blocks act as D M D⁻¹). A leg on a ``part`` returns the whole
    parameter with only that slice moved."""
    if leg.part:
        src, axis = leg.slice_of(p.detach().to(torch.float64))
        out = torch.zeros_like(p, dtype=torch.float64) if tangent else p.detach().to(torch.float64, copy=True)
        leg.slice_of(out)[0].copy_(apply_mult_leg(src, dataclasses.replace(leg, part=(), axis=axis), mats, tangent,
                                                  gain))
        return out
    x = p.detach().to(torch.float64).movedim(leg.axis, 0)
    flat = x.reshape(x.shape[0], -1)
    out = torch.zeros_like(flat) if tangent else flat.clone()
    for b, copies in groups_of_entries(leg.entries).items():
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
            M = M.to(flat.device)
            if gain is not None:
                d = gain[idx].to(M.device)
                M = d[:, None] * M / d[None, :]
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


def shift_from_vector(shape: tuple, axes: tuple, vec: torch.Tensor, select=None,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """1 (x) t over the broadcast ``axes``; with ``select``, vec fills only those entries of t (the rest stay 0);
    with ``weight`` (one broadcast axis), t (x) weight instead of t (x) 1."""
    free = [i for i in range(len(shape)) if i not in axes]
    if select is not None:
        full = torch.zeros(int(np.prod([shape[i] for i in free], dtype=np.int64)), dtype=vec.dtype)
        full[torch.as_tensor(select)] = vec
        vec = full
    t = vec.reshape([shape[i] for i in free]) if free else vec.reshape(())
    for a in sorted(axes):
        t = t.unsqueeze(a)
    if weight is not None:
        if len(axes) != 1:
            raise PlanMismatchError("a weighted shift broadcasts along exactly one axis")
        t = t * weight.to(t.dtype).reshape([-1 if i == axes[0] else 1 for i in range(len(shape))])
    return t.expand(shape).clone()


def shift_weight(leg: Leg, params: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """d⁻¹ along a weighted shift leg's broadcast axis (None: an unweighted shift, t (x) 1)."""
    d = conj_gain(leg, params)
    return None if d is None else 1.0 / d
