"""What a probe carries and what the rules learn: legs, probes, the constraint store, parameter views.

A *probe* follows one candidate group action forward from its seed through the graph. Its state on a tensor is an
integer array of the tensor's full shape:

* multiplicative probes (``kind="mult"``) carry *coordinate ids*: the group acts on the tensor by
  ``T'[p] = sum_q M[C[p], C[q]] T[q]`` over positions ``q`` in the same fibre; ``-1`` marks positions it leaves
  alone. Coordinates are grouped into blocks by the solver; each block is one of the kinds of
  :mod:`gaugec.groups`.
* additive probes (``kind="add"``) carry *value labels*: the action adds ``delta`` with ``delta[p] = v[L[p]]``
  (positions with equal labels move by the same amount, ``-1`` means zero). Softmax, layer norm and the loss absorb
  a delta that is constant along their axis; a bias absorbs a delta that has its shape.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch.fx

from gaugec.arrays import distinct, groups
from gaugec.discover.fx import norm_dim


@dataclasses.dataclass
class Probe:
    id: int
    kind: str                 # "mult" | "add"
    seed: str                 # seed kind: "gl" | "diag" | "row_shift" | "translation"
    node: torch.fx.Node
    initial: np.ndarray
    coord_base: int = 0
    coord_count: int = 0
    legs: list = dataclasses.field(default_factory=list)
    tags: set = dataclasses.field(default_factory=set)
    citations: list = dataclasses.field(default_factory=list)   # (lemma id, node name, coordinate arrays or None)
    refusals: list = dataclasses.field(default_factory=list)    # (node name, reason)
    dead: bool = False
    sinks: list = dataclasses.field(default_factory=list)       # (node name, what)
    describe: str = ""
    mode: str = ""            # "orth": the rotation twin of a GL probe (passes RMS norms, conjugated by their gains)
    conj: dict = dataclasses.field(default_factory=dict)   # node -> (gain param, offset, gain flat index per position)
    # additive: further starting states (node -> labels) where a seed leg's parameter is read a second time (a tied
    # embedding's head), and per parameter the nodes those uses are at (the tied-use check counts them as covered)
    also: dict = dataclasses.field(default_factory=dict)
    also_uses: dict = dataclasses.field(default_factory=dict)


class Constraints:
    """Everything the rules learn, over global coordinate ids (kept as arrays: full-size models have millions)."""

    def __init__(self):
        self.n_coords = 0
        self.ranges: list[tuple[int, int, int, str]] = []   # (base, count, probe id, "gl" | "scalar")
        self.fibres: list[np.ndarray] = []
        self._fibre_keys: set = set()
        self.kinds: list[tuple[str, np.ndarray]] = []      # ("pos" | "scalar", coords) or ("rot2", [k, 2] pairs)
        self.kills: list[tuple[np.ndarray, str, str]] = []  # (coords, reason, node)
        self.half_edges: dict[str, dict[str, list]] = {}    # node -> side -> [(probe id, C)]
        self.tags: dict[str, list[np.ndarray]] = {}         # tag -> coordinates that met it (families are per block)

    def new_coords(self, n: int, probe_id: int, kind: str) -> int:
        base = self.n_coords
        self.n_coords += n
        self.ranges.append((base, n, probe_id, kind))
        return base

    def add_fibres(self, C: np.ndarray, axes: list[int]):
        """Each row of C along ``axes`` is a fibre: the action may not mix its coordinates with others."""
        self.add_fibre_rows(rows_along(C, axes))

    def add_fibre_rows(self, rows: np.ndarray):
        for row in rows:
            row = distinct(row[row >= 0])
            if len(row) > 1:
                key = row.tobytes()     # the exact coordinate set: a hash collision must never drop a fibre
                if key not in self._fibre_keys:
                    self._fibre_keys.add(key)
                    self.fibres.append(row)

    def kill(self, coords, reason: str, where: str = ""):
        coords = np.asarray(coords).reshape(-1)
        coords = coords[coords >= 0]
        if coords.size:
            self.kills.append((distinct(coords), reason, where))

    def restrict(self, coords, kind: str):
        coords = distinct(np.asarray(coords))
        self.kinds.append((kind, coords[coords >= 0]))

    def tie(self, rows: np.ndarray, kind: str):
        """Each row's coordinates (one normalised vector) form one block of ``kind``: "scale" (one common positive
        scale c I, a normalisation at eps = 0), "orth" (R with RᵀR = I, passing an RMS norm), "orth1" (also
        R 1 = 1, passing a layer norm) or "shear1" (I + w 1ᵀ, which fixes a layer norm's centred output)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(len(rows), -1)
        if rows.size:
            self.kinds.append((kind, rows))

    def tag(self, coords, tag: str):
        coords = distinct(np.asarray(coords))
        self.tags.setdefault(tag, []).append(coords[coords >= 0])


def rows_along(C: np.ndarray, axes: list[int]) -> np.ndarray:
    """The distinct rows of C along ``axes``, one per position of the other axes."""
    axes = [norm_dim(a, C.ndim) for a in axes]
    rest = [a for a in range(C.ndim) if a not in axes]
    return unique_rows(np.transpose(C, rest + axes).reshape(-1, int(np.prod([C.shape[a] for a in axes],
                                                                             dtype=np.int64))))


def unique_rows(rows: np.ndarray) -> np.ndarray:
    """The distinct rows of an integer matrix (as np.unique(rows, axis=0), in first-seen order)."""
    if rows.shape[0] <= 1 or rows.shape[1] == 0:
        return rows
    cls = row_classes(rows)
    _, first = np.unique(cls, return_index=True)
    return rows[np.sort(first)]


@functools.lru_cache(maxsize=64)
def _row_hash_weights(width: int) -> np.ndarray:
    rng = np.random.default_rng(0x9A06EC)
    return rng.integers(1, 2 ** 62, size=width, dtype=np.int64).astype(np.uint64)


def _row_hash(rows: np.ndarray) -> np.ndarray:
    w = _row_hash_weights(rows.shape[1])
    return (rows.astype(np.uint64) * w).sum(axis=1) + (rows.astype(np.uint64) ^ (w >> np.uint64(7))).sum(axis=1)


def _mixed_radix_key(rows: np.ndarray) -> np.ndarray | None:
    """One exact int64 per row (the row read as a number in mixed radix), or None when the columns' ranges are
    too wide for 63 bits (then rows are hashed)."""
    if rows.shape[1] > 8:
        return None
    lo, hi = rows.min(axis=0), rows.max(axis=0)
    spans = [int(h) - int(l_) + 1 for l_, h in zip(lo, hi)]
    if math.prod(spans) >= 2 ** 62:
        return None
    key = np.zeros(rows.shape[0], dtype=np.int64)
    for j, span in enumerate(spans):
        key *= span
        key += rows[:, j] - lo[j]
    return key


def row_classes(rows: np.ndarray) -> np.ndarray:
    """A class id per row, equal for equal rows (np.unique(rows, axis=0, return_inverse=True)[1], faster)."""
    if rows.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    key = _mixed_radix_key(rows)
    if key is not None:
        return np.unique(key, return_inverse=True)[1].reshape(-1)
    _, first, inv = np.unique(_row_hash(rows), return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    if not np.array_equal(rows[first[inv]], rows):   # a hash collision: never trust it, use the exact route
        _, inv = np.unique(rows, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
    return inv


@dataclasses.dataclass
class ParamView:
    """A tensor that is a parameter moved by index ops: ``idx[k]`` gives, per position of the view, the index
    along parameter axis k. Each is kept broadcastable (zero-copy for transposes and expands), so full-size
    weights never materialise a per-element array; ``P`` (flat index per position) is built on demand."""

    param: str
    idx: tuple              # one integer array per parameter axis, broadcastable to the view's shape
    pshape: tuple           # the parameter's shape
    offset: float = 0.0     # the view is (offset + w), e.g. Gemma gains

    @classmethod
    def of(cls, param: str, pshape: tuple) -> "ParamView":
        nd = len(pshape)
        idx = tuple(np.arange(s).reshape([s if a == k else 1 for a in range(nd)]) for k, s in enumerate(pshape))
        shape = tuple(pshape)
        return cls(param, tuple(np.broadcast_to(i, shape) for i in idx), shape)

    @property
    def shape(self) -> tuple:
        return np.broadcast_shapes(*[i.shape for i in self.idx]) if self.idx else ()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _flat_index(self, per_axis) -> np.ndarray:
        """Row-major flat parameter index from one index array per parameter axis."""
        flat, stride = 0, 1
        for k in reversed(range(len(self.pshape))):
            flat = flat + per_axis[k] * stride
            stride *= self.pshape[k]
        return np.asarray(flat, dtype=np.int64)

    @property
    def P(self) -> np.ndarray:
        shape = self.shape
        return self._flat_index([np.broadcast_to(i, shape) for i in self.idx])

    def row_labels(self) -> np.ndarray | None:
        """When the parameter's last axis runs along the view's last axis (a position table added to a stream, a
        class token): per position, the flat index of the parameter's row (its other axes), so a shift p + s 1
        along the last axis is a per-row scalar; None otherwise."""
        shape = self.shape
        if not shape or len(self.pshape) < 2:
            return None
        last = np.broadcast_to(self.idx[-1], shape)
        if not (last == np.arange(shape[-1])).all() or shape[-1] != self.pshape[-1]:
            return None
        rest = [np.broadcast_to(i, shape) for i in self.idx[:-1]]
        if any((r != r[..., :1]).any() for r in rest):
            return None
        flat, stride = np.zeros(shape, dtype=np.int64), 1
        for k in reversed(range(len(rest))):
            flat = flat + rest[k] * stride
            stride *= self.pshape[k]
        return flat

    def is_whole(self) -> bool:
        """The view is the parameter itself, axes in order (checked on the broadcast cores: no per-element array)."""
        if tuple(self.shape) != tuple(self.pshape):
            return False
        for k, i in enumerate(self.idx):
            core = i[tuple(slice(0, 1) if st == 0 else slice(None) for st in i.strides)]
            want = np.arange(self.pshape[k]).reshape([s if a == k else 1 for a, s in enumerate(self.pshape)])
            if core.shape != want.shape or not np.array_equal(core, want):
                return False
        return True

    def fixed(self, except_axis: int) -> tuple:
        """(parameter axis, index) for every axis but ``except_axis`` that the view holds at one index (an expert's
        slice ``W[e]`` of a stacked weight): a leg found through this view acts on that slice only."""
        out = []
        for k, (i, size) in enumerate(zip(self.idx, self.pshape)):
            if k == except_axis or size <= 1 or not i.size:
                continue
            core = i[tuple(slice(0, 1) if st == 0 else slice(None) for st in i.strides)]   # broadcast axes once
            if core.min() == core.max():
                out.append((k, int(core.flat[0])))
        return tuple(out)

    def fibre(self, axis: int) -> np.ndarray:
        """Flat parameter index along ``axis`` of the view, at index 0 of every other axis."""
        sl = tuple(slice(None) if a == axis else 0 for a in range(self.ndim))
        shape = self.shape
        return self._flat_index([np.broadcast_to(i, shape)[sl] for i in self.idx])


def first_positions(flatP: np.ndarray, n: int) -> np.ndarray:
    """For each of a parameter's ``n`` entries, the first flat position of a tensor (``flatP``: the entry read at
    each position) where it is read (0 where it is never read): where an absorbing bias reads its correction."""
    first = np.zeros(n, dtype=np.int64)
    order = np.arange(flatP.size)[::-1]
    first[flatP[order]] = order
    return first


def param_axis_coords(P: np.ndarray, C: np.ndarray, shape: tuple[int, ...]):
    """Find the parameter axis that carries the coordinates C, for a parameter view P used beside C.

    P and C broadcast together (P: flat parameter index per position). Returns (axis, coordinate per index along
    that axis, -1 where untouched) or None when no single axis carries them consistently.
    """
    P, C = np.broadcast_arrays(P, C)
    flatP, flatC = P.reshape(-1), C.reshape(-1)
    if not (flatC >= 0).any():
        return None
    idx = np.unravel_index(flatP, shape)
    for ax in range(len(shape)):
        keys, first, inv = groups(idx[ax])
        if not np.array_equal(flatC[first][inv], flatC):
            continue  # one parameter index meets two coordinates along this axis
        coords = np.full(shape[ax], -1, dtype=np.int64)
        coords[keys] = flatC[first]
        if (coords >= 0).any():
            return ax, coords
    return None
