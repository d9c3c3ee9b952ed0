"""The discovery memo: a second compile of a graph already discovered reads its gauges from disk.

Discovery is a deterministic function of what it reads: the captured graph (every node's op, its arguments with
their constants, its output shapes and dtypes, which parameter each placeholder binds, the values of integer
constants lifted by torch.export, which outputs are the user's), what f is (``f_leaves``), the loss, strict mode,
and the code that runs (gaugec's source files, every registered rule, pattern, seed, stream reader, tied-use
resolver and lemma, by its compiled code, so a rule registered or replaced at run time changes the key; numpy's and
torch's versions). The memo key is a SHA-256 of all of it, so a hit returns exactly what rediscovery would.

Proofs are not memoised here: every gauge's lemmas still go through :meth:`Proof.check` (whose own cache is keyed
by lemma content), and a model with weights is still checked numerically. Entries live in
``$GAUGEC_CACHE/discovery`` (default ``~/.cache/gaugec/discovery``), one ``.npz`` each (a JSON header and one flat
integer array, read with ``allow_pickle=False``), the newest ``MAX_ENTRIES`` within ``MAX_BYTES`` kept.
``GAUGEC_DISCOVERY_MEMO=0`` (or ``compile(..., memo=False)``) turns the memo off; a helper patched at run time
(not a registered rule) is invisible to the key, so code that does that should turn it off too.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import warnings
import zipfile

import numpy as np
import torch
import torch.fx

from gaugec.capture import GaugeGraph
from gaugec.prove.lemmas import cache_root

MAX_ENTRIES = 64
MAX_BYTES = 1 << 30
MEMO_FORMAT = "gaugec-discovery-1"


def memo_enabled(memo: bool | None) -> bool:
    if memo is not None:
        return memo
    return os.environ.get("GAUGEC_DISCOVERY_MEMO", "1") not in ("0", "")


def memo_dir() -> pathlib.Path:
    return cache_root() / "discovery"


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    """Every gaugec source file (read once per process)."""
    h = hashlib.sha256()
    root = pathlib.Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _code_digest(fn, depth: int = 0) -> bytes:
    """A registered callable by its compiled code, defaults and closure (a replaced or added rule changes it)."""
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    if code is None:       # a class (a pattern match type) or a callable object: its qualified name and module
        return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(type(fn)))}".encode()
    out = f"{fn.__module__}.{fn.__qualname__}".encode() + _code_bytes(code)
    cells = []
    for c in fn.__closure__ or ():
        try:
            cells.append(c.cell_contents)
        except ValueError:     # an empty cell
            cells.append(None)
    for v in [*(fn.__defaults__ or ()), *cells]:
        if callable(v) and depth < 2:
            out += _code_digest(v, depth + 1)
        elif isinstance(v, (int, float, str, bool, tuple, type(None))):
            out += repr(v).encode()
        else:
            out += type(v).__name__.encode()
    return out


def _code_bytes(code) -> bytes:
    """Bytecode, names and constants, nested functions included (marshal's output depends on reference counts)."""
    consts = b"".join(_code_bytes(c) if hasattr(c, "co_code") else repr(c).encode() for c in code.co_consts)
    return hashlib.sha256(code.co_code + repr((code.co_names, code.co_varnames, code.co_freevars)).encode()
                          + consts).digest()


def _registry_digest() -> str:
    from gaugec.discover.registry import (ADD_RULES, BARRIERS, CONJUGATED, INDEX_RULES, MULT_RULES, PATTERNS,
                                          SEED_RULES, STREAM_READERS, TIED_USES)
    from gaugec.prove.lemmas import LEMMAS

    h = hashlib.sha256()
    for table_name, table in (("mult", MULT_RULES), ("add", ADD_RULES), ("index", INDEX_RULES),
                              ("pattern", PATTERNS)):
        for op in sorted(table):
            h.update(f"{table_name}:{op}:".encode() + _code_digest(table[op]))
    for op in sorted(SEED_RULES):
        for fn in SEED_RULES[op]:
            h.update(f"seed:{op}:".encode() + _code_digest(fn))
    for fn in [*STREAM_READERS, *TIED_USES]:
        h.update(b"hook:" + _code_digest(fn) + repr(getattr(fn, "lemmas", ())).encode())
    h.update(repr(sorted(BARRIERS.items())).encode() + repr(sorted(CONJUGATED)).encode())
    for lid in sorted(LEMMAS):
        h.update(f"lemma:{lid}:{LEMMAS[lid].content_hash}".encode())
    return h.hexdigest()


def _value_key(val) -> str:
    if isinstance(val, torch.Tensor):
        return f"T{tuple(val.shape)}{val.dtype}{val.device.type}"
    if isinstance(val, (tuple, list)):
        return "(" + ",".join(_value_key(v) for v in val) + ")"
    return type(val).__name__ + ("" if val is None else repr(val) if isinstance(val, (int, float, bool)) else "")


def _constant_bytes(value) -> bytes:
    if not isinstance(value, torch.Tensor) or value.device.type == "meta":
        return repr(type(value)).encode()
    return f"{tuple(value.shape)}{value.dtype}".encode() + value.detach().cpu().contiguous().numpy().tobytes()


def graph_digest(gg: GaugeGraph) -> str:
    """What discovery reads of the captured graph (see the module docstring)."""
    h = hashlib.sha256()
    for n in gg.graph.nodes:
        target = getattr(n.target, "__name__", str(n.target)) if n.op == "call_function" else str(n.target)
        args = torch.fx.node.map_arg((n.args, n.kwargs), lambda a: f"%{a.name}")
        h.update(repr((n.op, n.name, target, getattr(n.target, "_overloadname", ""), args,
                       _value_key(n.meta.get("val")), gg.placeholder_param.get(n.name))).encode())
        if n.op == "get_attr":
            h.update(_constant_bytes(getattr(gg.graph_module, n.target, None)))
    if gg.exported is not None:
        sig = gg.exported.graph_signature
        for name, const in sorted(sig.inputs_to_lifted_tensor_constants.items()):
            h.update(name.encode() + _constant_bytes(gg.exported.constants.get(const)))
        h.update(repr([(s.kind.name, getattr(s.arg, "name", None)) for s in sig.output_specs]).encode())
    h.update(repr(gg.user_inputs).encode())
    h.update(repr([(k, tuple(v.shape)) for k, v in gg.params.items()]).encode())
    return h.hexdigest()


def memo_key(gg: GaugeGraph, loss, f_leaves, strict: bool) -> str:
    h = hashlib.sha256()
    h.update(MEMO_FORMAT.encode())
    h.update(f"{torch.__version__}|{np.__version__}|{loss!r}|{f_leaves!r}|{strict}".encode())
    h.update(_source_digest().encode())
    h.update(_registry_digest().encode())
    h.update(graph_digest(gg).encode())
    return h.hexdigest()


def _path(key: str) -> pathlib.Path:
    return memo_dir() / f"{key}.npz"


def load(key: str) -> tuple[list, list, dict] | None:
    """(gauges, refusals as tuples, unknown ops) stored for ``key``, or None: absent, or damaged (reported, removed,
    rediscovered)."""
    from gaugec.plan.plan import gauge_from_dict

    path = _path(key)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            head = json.loads(z["header"].tobytes())
            flat, sizes, ndims, dims = z["flat"].astype(np.int64), z["sizes"], z["ndims"], z["dims"]
        if head.get("format") != MEMO_FORMAT or head.get("key") != key:
            raise ValueError("format or key does not match")
        ends, dim_ends = np.cumsum(sizes), np.cumsum(ndims)
        arrays = [flat[e - n:e].reshape(dims[d - k:d]) for e, n, d, k in zip(ends, sizes, dim_ends, ndims)]
        gauges = [gauge_from_dict(d, arrays) for d in head["gauges"]]
        os.utime(path)      # recently used: kept by the pruning
        return gauges, [tuple(r) for r in head["refusals"]], dict(head["unknown_ops"])
    except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError, zipfile.BadZipFile) as exc:
        warnings.warn(f"gaugec: discovery memo entry {path} is damaged ({type(exc).__name__}: {exc}); "
                      "rediscovering", RuntimeWarning, stacklevel=3)
        path.unlink(missing_ok=True)
        return None


def store(key: str, gauges, refusals, unknown_ops: dict):
    """Write an entry atomically (a crash mid-write leaves no partial entry), then keep the newest MAX_ENTRIES
    entries within MAX_BYTES. Index arrays go to one flat integer array (JSON would take seconds at 8B size)."""
    from gaugec.plan.plan import gauge_to_dict

    arrays: list[np.ndarray] = []
    dicts = [gauge_to_dict(g, arrays) for g in gauges]
    flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0, dtype=np.int64)
    for dtype in (np.int16, np.int32, np.int64):
        if not flat.size or (flat.min() >= np.iinfo(dtype).min and flat.max() <= np.iinfo(dtype).max):
            flat = flat.astype(dtype)
            break
    header = json.dumps({"format": MEMO_FORMAT, "key": key, "gauges": dicts, "refusals": [list(r) for r in refusals],
                         "unknown_ops": unknown_ops}).encode()
    folder = memo_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{key}.{os.getpid()}.tmp.npz"
        np.savez(tmp, header=np.frombuffer(header, dtype=np.uint8), flat=flat,
                 sizes=np.array([a.size for a in arrays], dtype=np.int64),
                 ndims=np.array([a.ndim for a in arrays], dtype=np.int64),
                 dims=np.array([n for a in arrays for n in a.shape], dtype=np.int64))
        tmp.replace(_path(key))
        entries = sorted(folder.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
        total = 0
        for i, entry in enumerate(entries):
            total += entry.stat().st_size
            if ".tmp." not in entry.name and (i >= MAX_ENTRIES or total > MAX_BYTES):
                entry.unlink(missing_ok=True)
    except OSError as exc:   # a read-only or full cache costs the memo, never the compile
        warnings.warn(f"gaugec: could not write the discovery memo in {folder}: {exc}", RuntimeWarning,
                      stacklevel=3)
