"""What makes discovery fast at full size is exact. Layer replay (gaugec/discover/layers.py): discovery with it
equals discovery without it, gauge by gauge (every leg's index arrays), refusal by refusal; it replays on stacks of
identical layers and stays out of layers that differ or share weights. The solver's vectorised union-find with
parity agrees with the plain one."""
import numpy as np
import pytest
import torch
from torch import nn

from gaugec import zoo
from gaugec.capture import capture
from gaugec.discover import discover
from gaugec.plan.plan import gauge_to_dict


def _both(model, inputs, monkeypatch):
    gg = capture(model, inputs)
    monkeypatch.setenv("GAUGEC_LAYER_REPLAY", "0")
    plain = discover(gg, memo=False)
    monkeypatch.setenv("GAUGEC_LAYER_REPLAY", "1")
    replayed = discover(gg, memo=False)
    assert plain.replayed == 0
    a_arrays, b_arrays = [], []
    a = [gauge_to_dict(g, a_arrays) for g in plain.gauges]
    b = [gauge_to_dict(g, b_arrays) for g in replayed.gauges]
    assert a == b
    assert len(a_arrays) == len(b_arrays) and all(np.array_equal(x, y) for x, y in zip(a_arrays, b_arrays))
    assert [tuple(r.__dict__.values()) for r in plain.refusals] == \
        [tuple(r.__dict__.values()) for r in replayed.refusals]
    assert plain.unknown_ops == replayed.unknown_ops
    return replayed


def _ids(vocab):
    return (torch.randint(0, vocab, (2, 5), generator=torch.Generator().manual_seed(0)),)


@pytest.mark.parametrize("name", ["llama", "gpt2", "post_ln"])
def test_replay_equals_a_full_run_on_the_zoo(name, monkeypatch):
    model = {"llama": lambda: zoo.TinyLlama(vocab=24, d=8, n_layers=5, n_heads=2, n_kv_heads=1, d_ff=12),
             "gpt2": lambda: zoo.TinyGPT2(vocab=24, d=8, n_layers=5, n_heads=2, n_pos=8),
             "post_ln": lambda: zoo.TinyPostLN(vocab=24, d=8, n_layers=5, n_heads=2, n_pos=6)}[name]()
    found = _both(model, _ids(24), monkeypatch)
    assert found.replayed > 0


def test_replay_equals_a_full_run_on_hugging_face_models(monkeypatch):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=5,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                   use_cache=False)
    assert _both(transformers.LlamaForCausalLM(cfg), _ids(32), monkeypatch).replayed > 0
    cfg = transformers.BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                  intermediate_size=24, max_position_embeddings=16)
    assert _both(transformers.BertForMaskedLM(cfg), _ids(32), monkeypatch).replayed > 0


class _Block(nn.Module):
    def __init__(self, d, act):
        super().__init__()
        self.up, self.down, self.act = nn.Linear(d, 2 * d), nn.Linear(2 * d, d), act

    def forward(self, h):
        return h + self.down(self.act(self.up(h)))


class _Stack(nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.layers = nn.ModuleList(blocks)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def test_layers_that_differ_or_share_weights_are_run_for_real(monkeypatch):
    x = (torch.randn(3, 4, generator=torch.Generator().manual_seed(1)),)
    same = _both(_Stack([_Block(4, nn.ReLU()) for _ in range(6)]), x, monkeypatch).replayed
    assert same > 0
    # layer 3 uses GELU (no rescaling): it must not take layer 1's ReLU gauge
    mixed = _both(_Stack([_Block(4, nn.GELU() if i == 3 else nn.ReLU()) for i in range(6)]), x, monkeypatch)
    assert mixed.replayed < same
    assert not any("layers.3." in lg.param for g in mixed.gauges if g.family == "positive_rescale" for lg in g.legs)
    assert any("layers.4." in lg.param for g in mixed.gauges if g.family == "positive_rescale" for lg in g.legs)
    shared = _Block(4, nn.ReLU())      # ALBERT-style: one block's weights used by layers 2 and 4
    _both(_Stack([_Block(4, nn.ReLU()), _Block(4, nn.ReLU()), shared, _Block(4, nn.ReLU()), shared,
                  _Block(4, nn.ReLU())]), x, monkeypatch)


def test_classes_with_parity_agree_with_a_union_find_and_find_contradictions():
    """The solver's vectorised union-find with parity (min-label propagation on the doubled graph) against the
    plain one on random ties: the same classes, the same relative parities, and the contradictory classes (a
    coordinate tied to its own dual) exactly."""
    from gaugec.discover.solve import UnionFind, classes_with_parity

    rng = np.random.default_rng(3)
    for trial in range(40):
        n, k = 60, int(rng.integers(1, 70))
        a, b = rng.integers(0, n, k), rng.integers(0, n, k)
        par = rng.integers(0, 2, k)
        roots, parity, conflict = classes_with_parity(n, a, b, par)
        uf = UnionFind(n)
        bad_pairs = []
        for x, y, p in zip(a.tolist(), b.tolist(), par.tolist()):
            (rx, px), (ry, py) = uf.find(x), uf.find(y)
            if rx == ry and px ^ py != p:
                bad_pairs.append(x)
            uf.union(x, y, p)
        ref = [uf.find(x) for x in range(n)]
        same = lambda i, j: ref[i][0] == ref[j][0]          # noqa: E731
        for i in range(n):
            assert roots[i] == min(j for j in range(n) if same(i, j)), trial
        bad_roots = {ref[x][0] for x in bad_pairs}
        assert set(conflict.tolist()) == {int(roots[r]) for r in bad_roots}, trial
        for i in range(n):                                   # parity relative to the class root, where consistent
            r = int(roots[i])
            if ref[r][0] not in bad_roots:
                assert int(parity[i]) == ref[i][1] ^ ref[r][1], trial
