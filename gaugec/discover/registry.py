"""The rule registry: per-op rules by probe kind, index rules, seeds, explicit barriers, and multi-node patterns.

A rule is ``fn(ctx, node) -> state | None`` (``ctx``: :class:`gaugec.discover.engine.RuleCtx`), registered with
``@rule("op", kind=...)``. A *pattern* is an op spread over several nodes (RoPE's ``x cos + rotate_half(x) sin``):
``@pattern(name)`` registers ``find(engine) -> [PatternMatch]``, run once per graph before seeding; the engine then
evaluates each match as one op at its output node. Rules and patterns import this module, never the engine.

Strict mode (``GAUGEC_STRICT=1``, or ``gaugec.compile(..., strict=True)``): a rule that raises re-raises as
:class:`RuleError` instead of becoming a barrier, so a typo in a new rule fails loudly instead of showing up only as
a missing gauge. The test suite runs in strict mode.
"""
from __future__ import annotations

import os
from typing import Callable

import torch.fx


MULT_RULES: dict[str, Callable] = {}
ADD_RULES: dict[str, Callable] = {}
INDEX_RULES: dict[str, Callable] = {}     # pure array maps shared by every probe kind and by parameter views
SEED_RULES: dict[str, list[Callable]] = {}   # every seed rule registered for an op runs (a linear seeds its own
                                             # groups and, in norm.py, the kernel of the layer norm it reads)
BARRIERS: dict[str, str] = {}             # op -> reason (explicit refusals, shown by --explain)
CONJUGATED: set[str] = set()              # mult rules that read a gain-conjugated state (``ctx.conj_of``)
STREAM_READERS: list[Callable] = []       # find(engine) -> nodes a normalised stream's rotation can pass
TIED_USES: list[Callable] = []            # resolve(engine, param, use node, legs, kind_of) -> extra legs or None


def rule(*names: str, kind: str, conjugated: bool = False):
    """Register ``fn(ctx, node) -> state | None`` for ops ``names``; kind is "mult", "add", "both" or "seed".
    ``conjugated``: the rule handles an input that a rotation reaches through a norm gain (D R D⁻¹); every other
    rule is a barrier for such an input."""

    def deco(fn):
        tables = {"mult": [MULT_RULES], "add": [ADD_RULES], "both": [MULT_RULES, ADD_RULES],
                  "seed": [SEED_RULES], "index": [INDEX_RULES]}[kind]
        for table in tables:
            for n in names:
                if table is SEED_RULES:
                    table.setdefault(n, []).append(fn)
                else:
                    table[n] = fn
        if conjugated:
            CONJUGATED.update(names)
        return fn

    return deco


def stream_readers(find: Callable) -> Callable:
    """Register ``find(engine) -> iterable of nodes``: the inputs of normalisations a rotation passes (a writer whose
    output reaches one gets a rotation twin of its GL probe, see ``Engine.seed_all``)."""
    STREAM_READERS.append(find)
    return find


def tied_use(*lemmas: str):
    """Register ``resolve(engine, param, node, legs, kind_of) -> list[Leg] | None``: a second use ``node`` of a
    tied parameter that the gauge's probes never reached, made whole by extra legs (a tied head whose input gain
    takes the inverse of a stream scale); None when it cannot be. ``kind_of(coords)`` gives the block kind of each
    coordinate; ``lemmas`` are cited at ``node`` by every gauge a resolution completes."""

    def deco(resolve: Callable) -> Callable:
        resolve.lemmas = lemmas
        TIED_USES.append(resolve)
        return resolve

    return deco


def barrier(reason: str, *names: str):
    for n in names:
        BARRIERS[n] = reason


PATTERNS: dict[str, Callable] = {}      # name -> find(engine) -> list[PatternMatch]


class PatternMatch:
    """One recognised multi-node op: ``output`` (the node whose value the op produces), ``internal`` (every node
    of the op, ``output`` included) and ``apply(ctx, node)``, its rule, evaluated at ``output``."""

    name = "pattern"
    output: torch.fx.Node
    internal: set

    def apply(self, ctx, node):
        raise NotImplementedError(f"pattern {self.name!r} has no rule")


def pattern(name: str):
    """Register ``find(engine) -> list[PatternMatch]`` under ``name``."""

    def deco(find):
        PATTERNS[name] = find
        return find

    return deco


class RuleError(RuntimeError):
    """A rule raised while handling a node (strict mode only; otherwise the node is a barrier)."""


def strict_default() -> bool:
    return os.environ.get("GAUGEC_STRICT", "") not in ("", "0")
