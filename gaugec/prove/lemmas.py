"""Lemmas: identities that sympy checks.

A lemma is a function that builds sympy expressions, each of which must simplify to zero (or a sympy ``True``).
Rules cite lemmas by id; :func:`check_lemma` runs sympy once per lemma content and caches the verdict on disk,
keyed by a hash of the lemma's source and the sympy version, so an edited lemma is always re-checked.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import pathlib
import threading
from typing import Callable

import sympy as sp


class ProofError(RuntimeError):
    """A lemma did not hold under sympy, or a certificate cites an unknown lemma."""


@dataclasses.dataclass(frozen=True)
class Lemma:
    id: str
    statement: str
    build: Callable[[], list]

    @property
    def content_hash(self) -> str:
        src = inspect.getsource(self.build)
        h = hashlib.sha256(f"{self.id}\n{self.statement}\n{src}\n{sp.__version__}".encode())
        return h.hexdigest()[:16]


LEMMAS: dict[str, Lemma] = {}


def lemma(lemma_id: str, statement: str):
    """Register a lemma. The decorated function returns a list of sympy expressions that must vanish."""

    def deco(fn):
        if lemma_id in LEMMAS:
            raise ValueError(f"lemma {lemma_id!r} registered twice")
        LEMMAS[lemma_id] = Lemma(lemma_id, statement, fn)
        return fn

    return deco


def cache_root() -> pathlib.Path:
    """gaugec's on-disk caches (lemma verdicts, the discovery memo): ``$GAUGEC_CACHE`` or ``~/.cache/gaugec``."""
    return pathlib.Path(os.environ.get("GAUGEC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gaugec"))


def _cache_path() -> pathlib.Path:
    return cache_root() / "lemmas.json"


_lock = threading.Lock()
_memory: dict[str, bool] = {}
_disk_loaded = False
STATS = {"sympy_runs": 0, "cache_hits": 0}


def _load_disk():
    global _disk_loaded
    if _disk_loaded:
        return
    _disk_loaded = True
    path = _cache_path()
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            _memory.update({k: bool(v) for k, v in data.items()})
    except (OSError, ValueError):
        pass


def _save_disk():
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_memory, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass


def clear_cache(disk: bool = False):
    global _disk_loaded
    _memory.clear()
    _disk_loaded = True
    if disk:
        try:
            _cache_path().unlink()
        except OSError:
            pass


def _vanishes(expr) -> bool:
    if expr is sp.true or expr is True:
        return True
    if isinstance(expr, sp.MatrixBase):
        return all(_vanishes(e) for e in expr)
    if isinstance(expr, sp.logic.boolalg.BooleanAtom):
        return bool(expr)
    expanded = sp.expand(expr)
    if expanded == 0 or sp.cancel(sp.together(expanded)) == 0:   # polynomial and rational identities: no simplify
        return True
    simplified = sp.simplify(expanded)
    if simplified == 0:
        return True
    return sp.simplify(sp.trigsimp(sp.powsimp(sp.expand(simplified), force=True))) == 0


def run_lemma(lem: Lemma) -> bool:
    """Run sympy on the lemma, no cache."""
    STATS["sympy_runs"] += 1
    return all(_vanishes(e) for e in lem.build())


def check_lemma(lemma_id: str, use_cache: bool = True) -> bool:
    if lemma_id not in LEMMAS:
        raise ProofError(f"unknown lemma {lemma_id!r}")
    lem = LEMMAS[lemma_id]
    key = f"{lemma_id}:{lem.content_hash}"
    with _lock:
        if use_cache:
            _load_disk()
            if key in _memory:
                STATS["cache_hits"] += 1
                return _memory[key]
        ok = run_lemma(lem)
        _memory[key] = ok
        _save_disk()
        return ok


# ----------------------------------------------------------------------------------------------------------------
# Lemmas shared by several rules (the rule-specific ones live next to their rules in gaugec/discover/rules/).

def sym_matrix(name: str, n: int, m: int | None = None) -> sp.Matrix:
    m = n if m is None else m
    return sp.Matrix(n, m, lambda i, j: sp.Symbol(f"{name}_{i}{j}", real=True))


def sym_vector(name: str, n: int) -> sp.Matrix:
    return sp.Matrix(n, 1, lambda i, _: sp.Symbol(f"{name}_{i}", real=True))


@lemma("index_transport", "an index map P (view/permute/slice/cat) satisfies P(A x) = (P A P^+) P x on the moved "
       "coordinates: the action moves with the indices")
def _index_transport():
    x = sym_vector("x", 3)
    A = sym_matrix("a", 3)
    P = sp.Matrix([[0, 1, 0], [0, 0, 1], [1, 0, 0]])  # a permutation (transpose/view reorder)
    return [P * (A * x) - (P * A * P.T) * (P * x)]


@lemma("linear_writer", "A (W x + b) = (A W) x + (A b): a linear writer carries GL on its output axis")
def _linear_writer():
    W, A = sym_matrix("w", 2, 3), sym_matrix("a", 2)
    x, b = sym_vector("x", 3), sym_vector("b", 2)
    return [A * (W * x + b) - ((A * W) * x + A * b)]


@lemma("linear_reader", "(V A^-1)(A x) = V x: a linear reader absorbs GL on its input axis")
def _linear_reader():
    A = sp.Matrix([[sp.Symbol("p"), sp.Symbol("q")], [sp.Symbol("r"), sp.Symbol("s")]])
    V, x = sym_matrix("v", 3, 2), sym_vector("x", 2)
    return [(V * A.inv()) * (A * x) - V * x]


@lemma("scalar_commute", "(A x) * s = A (x * s) for a scalar s (scale, dtype cast, eval dropout)")
def _scalar_commute():
    A, x, s = sym_matrix("a", 2), sym_vector("x", 2), sp.Symbol("s")
    return [(A * x) * s - A * (x * s)]


@lemma("diag_mul", "(D x) ⊙ y = D (x ⊙ y) for diagonal D: elementwise products pass diagonal maps only")
def _diag_mul():
    c = sp.symbols("c0:3", nonzero=True)
    x, y = sym_vector("x", 3), sym_vector("y", 3)
    D = sp.diag(*c)
    return [(D * x).multiply_elementwise(y) - D * x.multiply_elementwise(y)]


@lemma("bilinear_contract", "(A q)^T (A^-T k) = q^T k: a contraction pairs a map on one factor with the "
       "inverse transpose on the other")
def _bilinear_contract():
    A = sp.Matrix([[sp.Symbol("p"), sp.Symbol("q")], [sp.Symbol("r"), sp.Symbol("s")]])
    q, k = sym_vector("q", 2), sym_vector("k", 2)
    return [((A * q).T * (A.inv().T * k))[0] - (q.T * k)[0]]


@lemma("matmul_free_axis", "P (V B) = (P V) B: a map on a free (uncontracted) axis passes through a matmul")
def _matmul_free_axis():
    P, V, B = sym_matrix("p", 2, 3), sym_matrix("v", 3, 2), sym_matrix("b", 2)
    return [P * (V * B) - (P * V) * B]


@lemma("additive_linear", "W (x + d) + (b - W d) = W x + b: a bias absorbs a translation pushed through a linear")
def _additive_linear():
    W, x, d, b = sym_matrix("w", 2, 3), sym_vector("x", 3), sym_vector("d", 3), sym_vector("b", 2)
    return [W * (x + d) + (b - W * d) - (W * x + b)]


@lemma("additive_passthrough", "(x + d) + y = (x + y) + d, (x + d) s = x s + d s: translations pass adds and "
       "scalings")
def _additive_passthrough():
    x, d, y, s = sp.symbols("x d y s")
    return [((x + d) + y) - ((x + y) + d), (x + d) * s - (x * s + d * s)]


@lemma("mean_cancel", "(x + d 1) - mean(x + d 1) = x - mean(x): centring removes a constant translation")
def _mean_cancel():
    xs = sp.symbols("x0:3")
    d = sp.Symbol("d")
    m = sum(xs) / 3
    md = sum(x + d for x in xs) / 3
    return [(xs[i] + d - md) - (xs[i] - m) for i in range(3)]
