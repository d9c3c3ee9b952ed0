"""Group elements acting on parameters: a multiplicative leg moved by its blocks' matrices (or their Lie-algebra
elements, for tangents), and the broadcast shift of an additive leg."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from gaugec.arrays import distinct
from gaugec.plan.gauge import Leg, PlanMismatchError


def groups_of_entries(entries: np.ndarray):
    """Per block: lists of (positions, locals) copies; a copy holds each local index at most once."""
    out: dict[int, list] = {}
    blocks = entries[:, 0]
    for b in distinct(blocks[blocks >= 0]):
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


def leg_layout(entries: np.ndarray) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """The copies of :func:`groups_of_entries` batched by (block size m, parity): per class, the block of each copy
    [nc] and its positions in local order [nc, m]. A copy that covers part of a block is a plan error."""
    classes: dict[tuple[int, int], tuple[list, list]] = {}
    for b, copies in groups_of_entries(entries).items():
        m = int(entries[(entries[:, 0] == b), 1].max()) + 1
        for pos, loc, parity in copies:
            if sorted(loc) != list(range(m)):
                raise PlanMismatchError(f"a leg covers part of block {b} (locals {sorted(loc)})")
            blocks, rows = classes.setdefault((m, parity), ([], []))
            blocks.append(b)
            rows.append(np.asarray(pos)[np.argsort(loc)])
    return [(m, parity, np.asarray(bl), np.stack(rw)) for (m, parity), (bl, rw) in classes.items()]


def _cached_layout(leg: Leg):
    """leg_layout, kept on the leg (a plan's legs do not change once built)."""
    cached = leg.__dict__.get("_layout")
    if cached is None or cached[0] is not leg.entries:
        cached = (leg.entries, leg_layout(leg.entries))
        leg.__dict__["_layout"] = cached
    return cached[1]


def apply_mult_leg(p: torch.Tensor, leg: Leg, mats: list[torch.Tensor], tangent: bool = False,
                   gain: torch.Tensor | None = None) -> torch.Tensor:
    """Return the moved parameter (or, with tangent=True and mats = Lie algebra elements, the tangent). ``gain``:
    :func:`conj_gain` of a conjugated leg (its blocks act as D M D⁻¹). A leg on a ``part`` returns the whole
    parameter with only that slice moved. Every copy of a block of one size is moved by one batched product."""
    if leg.part:
        src, axis = leg.slice_of(p.detach().to(torch.float64))
        out = torch.zeros_like(p, dtype=torch.float64) if tangent else p.detach().to(torch.float64, copy=True)
        leg.slice_of(out)[0].copy_(apply_mult_leg(src, dataclasses.replace(leg, part=(), axis=axis), mats, tangent,
                                                  gain))
        return out
    if leg.role not in ("out", "in", "gain"):
        raise PlanMismatchError(f"unknown role {leg.role!r} for a multiplicative leg")
    x = p.detach().to(torch.float64).movedim(leg.axis, 0)
    flat = x.reshape(x.shape[0], -1)
    out = torch.zeros_like(flat) if tangent else flat.clone()
    for m, parity, blocks, pos in _cached_layout(leg):
        keep = [i for i, b in enumerate(blocks) if mats[b] is not None]
        if not keep:
            continue
        pos = torch.as_tensor(pos[keep])                                     # [nc, m]
        A = torch.stack([mats[blocks[i]] for i in keep]).to(flat.device)     # [nc, m, m]
        if A.shape[-1] != m:
            raise PlanMismatchError(f"leg {leg.param}: a block of size {A.shape[-1]} meets a copy of size {m}")
        M = A
        if parity:
            M = -A.mT if tangent else torch.linalg.inv(A).mT
        if gain is not None:
            d = gain.to(M.device)[pos]
            M = d[:, :, None] * M / d[:, None, :]
        rows = flat[pos]                                                     # [nc, m, rest]
        if leg.role == "out":
            new = M @ rows
        elif leg.role == "in":
            new = (-M.mT if tangent else torch.linalg.inv(M).mT) @ rows
        else:
            diag = torch.diagonal(M, dim1=-2, dim2=-1)[:, :, None]
            new = diag * (rows + leg.offset) if tangent else diag * (rows + leg.offset) - leg.offset
        out[pos.reshape(-1)] = new.reshape(-1, flat.shape[1])
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
    return t.expand(shape)      # a broadcast view (no copy of a large table): read it, never write into it


def shift_weight(leg: Leg, params: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """d⁻¹ along a weighted shift leg's broadcast axis (None: an unweighted shift, t (x) 1)."""
    d = conj_gain(leg, params)
    return None if d is None else 1.0 / d
