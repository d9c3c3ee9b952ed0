"""Group elements acting on parameters: a multiplicative leg moved by its blocks' matrices (or their Lie-algebra
elements, for tangents), and the broadcast shift of an additive leg."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from gaugec.plan.gauge import Leg, PlanMismatchError


def _copies(entries: np.ndarray):
    """(positions, block, local, parity, copy) of the live entries (block ≥ 0): the k-th occurrence of a (block,
    local) pair in position order belongs to copy k of the block."""
    live = np.nonzero(entries[:, 0] >= 0)[0]
    block, local, parity = (entries[live, k].astype(np.int64) for k in range(3))
    by_pair = np.lexsort((live, local, block))               # (block, local) runs, positions increasing within
    starts = np.ones(live.size, dtype=bool)
    starts[1:] = (block[by_pair][1:] != block[by_pair][:-1]) | (local[by_pair][1:] != local[by_pair][:-1])
    first = np.maximum.accumulate(np.where(starts, np.arange(live.size), 0))
    copy = np.empty(live.size, dtype=np.int64)
    copy[by_pair] = np.arange(live.size) - first
    return live, block, local, parity, copy


def _runs(keys: list[np.ndarray], order: np.ndarray) -> np.ndarray:
    """Start indices (into ``order``) of the runs of equal keys, plus the end."""
    change = np.zeros(max(order.size - 1, 0), dtype=bool)
    for k in keys:
        change |= k[order][1:] != k[order][:-1]
    return np.concatenate([[0], np.nonzero(change)[0] + 1, [order.size]])


def groups_of_entries(entries: np.ndarray) -> dict[int, list[tuple[list, list, int]]]:
    """Per block: its copies along the leg's axis, each (positions, locals, parity), positions increasing; a copy
    holds each local index at most once. A copy whose entries disagree on the parity (a block mixed with its dual)
    is a plan error."""
    live, block, local, parity, copy = _copies(entries)
    if not live.size:
        return {}
    order = np.lexsort((live, copy, block))                  # by block, copy, position
    bounds = _runs([block, copy], order)
    out: dict[int, list] = {}
    for a, b in zip(bounds[:-1], bounds[1:]):
        run = order[a:b]
        par = parity[run]
        if (par != par[0]).any():
            raise PlanMismatchError("a leg mixes a block and its dual within one copy")
        out.setdefault(int(block[run[0]]), []).append((live[run].tolist(), local[run].tolist(), int(par[0])))
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
    [nc] and its positions in local order [nc, m], copies ordered by their first position. A copy that covers part
    of a block, or mixes a block with its dual, is a plan error."""
    live, block, local, parity, copy = _copies(entries)
    if not live.size:
        return []
    size = np.zeros(int(block.max()) + 1, dtype=np.int64)
    np.maximum.at(size, block, local + 1)
    order = np.lexsort((local, copy, block))                 # each copy's entries in local order
    bounds = _runs([block, copy], order)
    starts, lengths = bounds[:-1], np.diff(bounds)
    run_block = block[order[starts]]
    partial = lengths != size[run_block]
    if partial.any():
        b = int(run_block[np.nonzero(partial)[0][0]])
        raise PlanMismatchError(f"a leg covers part of block {b} (locals {sorted(set(local[block == b].tolist()))})")
    run_parity = parity[order[starts]]
    if (np.repeat(run_parity, lengths) != parity[order]).any():
        raise PlanMismatchError("a leg mixes a block and its dual within one copy")
    out = []
    for m, par in sorted({(int(m), int(p)) for m, p in zip(lengths, run_parity)}):
        pick = np.nonzero((lengths == m) & (run_parity == par))[0]
        rows = live[order[starts[pick][:, None] + np.arange(m)[None, :]]]
        by_row = np.argsort(rows[:, 0], kind="stable")      # copies in the order of their rows along the axis
        out.append((m, par, run_block[pick][by_row], rows[by_row]))
    return out


def cached_layout(leg: Leg):
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
    layout = cached_layout(leg)
    out = None
    for m, parity, blocks, pos in layout:
        keep = [i for i, b in enumerate(blocks) if mats[b] is not None]
        if not keep:
            continue
        # the usual case: one class of copies that moves every row in order (a gain's rows, heads side by side):
        # rows are a view and the product is the output, with no gather, scatter or copy of the parameter
        in_order = len(layout) == 1 and len(keep) == len(blocks) and pos.size == flat.shape[0] \
            and bool((pos.reshape(-1) == np.arange(pos.size)).all())
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
        rows = flat.reshape(len(keep), m, -1) if in_order else flat[pos]    # [nc, m, rest]
        if leg.role == "out":
            new = M * rows if m == 1 else M @ rows
        elif leg.role == "in":
            Minv = -M.mT if tangent else (1.0 / M if m == 1 else torch.linalg.inv(M).mT)
            new = Minv * rows if m == 1 else Minv @ rows
        else:
            diag = torch.diagonal(M, dim1=-2, dim2=-1)[:, :, None]
            new = diag * (rows + leg.offset) if tangent else diag * (rows + leg.offset) - leg.offset
        if in_order:
            out = new.reshape(flat.shape)
            break
        if out is None:
            out = torch.zeros_like(flat) if tangent else flat.clone()
        out[pos.reshape(-1)] = new.reshape(-1, flat.shape[1])
    if out is None:       # no block of this leg moves
        out = torch.zeros_like(flat) if tangent else flat.clone()
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
