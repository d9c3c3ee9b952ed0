"""The discovery memo: a second compile of the same graph reads its gauges from disk, identical to rediscovery;
anything discovery reads (the graph, the loss, a rule) changes the key; a damaged entry is rediscovered."""
import warnings

import numpy as np
import pytest
import torch

import gaugec
from gaugec import zoo
from gaugec.capture import capture
from gaugec.discover import discover, memo
from gaugec.discover.registry import MULT_RULES


@pytest.fixture
def memo_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GAUGEC_CACHE", str(tmp_path))
    return tmp_path / "discovery"


def test_second_compile_reads_the_memo_and_equals_rediscovery(memo_cache):
    model, inputs = zoo.llama()
    fresh = gaugec.compile(model, inputs, memo=False)
    first = gaugec.compile(model, inputs, memo=True)
    second = gaugec.compile(model, inputs, memo=True)
    assert not fresh.discovery_from_memo and not first.discovery_from_memo and second.discovery_from_memo
    assert len(list(memo_cache.glob("*.npz"))) == 1
    assert second.to_json() == fresh.to_json()      # gauges, legs, proofs, numeric residuals
    assert second.dim == fresh.dim == first.dim
    assert all(g.proof.status == "proved" for g in second.gauges)   # proofs and the numeric check ran again
    assert [tuple(r.__dict__.values()) for r in second.refusals] == [tuple(r.__dict__.values())
                                                                      for r in fresh.refusals]
    assert second.unknown_ops == fresh.unknown_ops


def test_what_discovery_reads_changes_the_key(memo_cache, monkeypatch):
    model, inputs = zoo.llama()
    gg = capture(model, inputs)
    key = memo.memo_key(gg, "cross_entropy", None, True)
    assert memo.memo_key(capture(model, inputs), "cross_entropy", None, True) == key   # recapture: same key
    assert memo.memo_key(gg, "mse", None, True) != key
    assert memo.memo_key(gg, "cross_entropy", None, False) != key
    other, other_inputs = zoo.llama(eps=1e-3)     # one constant of the graph differs
    assert memo.memo_key(capture(other, other_inputs), "cross_entropy", None, True) != key
    longer = (torch.cat([inputs[0], inputs[0]], 1),)   # another sequence length: other shapes
    assert memo.memo_key(capture(model, longer), "cross_entropy", None, True) != key
    # a rule replaced at run time (not in gaugec's source files) is part of the key
    op = next(iter(MULT_RULES))
    original = MULT_RULES[op]
    monkeypatch.setitem(MULT_RULES, op, lambda ctx, node: original(ctx, node))
    assert memo.memo_key(gg, "cross_entropy", None, True) != key


def test_a_damaged_entry_is_reported_and_rediscovered(memo_cache):
    model, inputs = zoo.gelu_mlp()
    gg = capture(model, inputs)
    first = discover(gg, memo=True)
    (entry,) = memo_cache.glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:200])       # truncated
    with pytest.warns(RuntimeWarning, match="damaged"):
        again = discover(gg, memo=True)
    assert not again.from_memo
    assert [g.dim for g in again.gauges] == [g.dim for g in first.gauges]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hit = discover(gg, memo=True)                 # rewritten: a clean hit
    assert hit.from_memo
    for a, b in zip(hit.gauges, first.gauges):
        assert a.blocks == b.blocks and len(a.legs) == len(b.legs)
        for la, lb in zip(a.legs, b.legs):
            assert la.param == lb.param and la.role == lb.role
            assert (la.entries is None) == (lb.entries is None)
            if la.entries is not None:
                assert np.array_equal(la.entries, lb.entries)


def test_memo_off_by_environment(memo_cache, monkeypatch):
    monkeypatch.setenv("GAUGEC_DISCOVERY_MEMO", "0")
    model, inputs = zoo.gelu_mlp()
    gg = capture(model, inputs)
    discover(gg)
    assert not discover(gg).from_memo and not memo_cache.exists()
