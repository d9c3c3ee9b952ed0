"""Dead-direction readings: toy orders, gauge vs. genuine directions, the LayerNorm kernel, conservation laws."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import gaugec
from gaugec.functional import float64_twin
from gaugec import measure, zoo


class Power(nn.Module):
    """Gaussian location model μ = w^k (a scalar parameter), read at w = 0."""

    def __init__(self, k):
        super().__init__()
        self.k = k
        self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x):
        return (self.w ** self.k) * torch.ones_like(x)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_gaussian_location_order_is_exact(k):
    r = measure.directional_order(Power(k), (torch.zeros(5, 1, dtype=torch.float64),), [1.0], likelihood="gaussian")
    assert r.order == pytest.approx(k, abs=1e-9)
    assert r.coefficient == pytest.approx(1 / (2 * k), abs=1e-9)
    assert r.fit_r2 > 1 - 1e-12
    assert r.kind == ("regular" if k == 1 else "singular")


class Product(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.w2 = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x):
        return self.w1 * self.w2 * x


def test_product_separates_the_read_direction_from_the_approach():
    model, x = Product(), (torch.randn(6, 1, dtype=torch.float64),)
    along = measure.directional_order(model, x, [1.0, 1.0], approach=[1.0, 1.0], likelihood="gaussian")
    assert along.order == pytest.approx(2.0, abs=1e-9) and along.kind == "singular"
    across = measure.directional_order(model, x, [1.0, -1.0], approach=[1.0, 1.0], likelihood="gaussian")
    assert across.kind == "gauge"


@pytest.mark.parametrize("name", ["relu_mlp", "ln_mlp", "convnet", "gpt2", "llama_gqa"])
def test_every_gauge_of_the_zoo_reads_as_gauge(name):
    model, inputs = zoo.load(name)
    plan = gaugec.compile(model, inputs)
    m, inputs = float64_twin(model, inputs)
    bound = gaugec.GaugePlan(m, plan.gauges, loss=plan.loss, graph=plan.graph, example_inputs=inputs)
    B = bound.tangent_basis()
    rows, o = [], 0
    for g in bound.gauges:
        rows.append(B[o])
        o += g.dim
    assert rows, name                 # something was found to read
    readings = measure.classify(m, inputs, rows, plan=bound, ts=[1e-3, 1e-1])
    assert [r["kind"] for r in readings] == ["gauge"] * len(rows), [g.name for g in bound.gauges]


def test_every_gauge_of_the_zoo_llama_reads_as_gauge(llama_plan):
    model, inputs, plan = llama_plan
    m = copy.deepcopy(model).double()
    bound = gaugec.GaugePlan(m, plan.gauges, loss=plan.loss, graph=plan.graph, example_inputs=inputs)
    B = bound.tangent_basis()
    rows, o = [], 0
    for g in bound.gauges:            # one generator per gauge, plus a random combination of all of them
        rows.append(B[o])
        o += g.dim
    rows.append(torch.randn(B.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64) @ B)
    readings = measure.classify(m, inputs, rows, plan=bound, ts=[1e-3, 1e-2, 1e-1])
    assert all(r["kind"] == "gauge" and r["in_plan"] for r in readings)
    # and a random direction is not a gauge
    rnd = torch.randn(B.shape[1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (r,) = measure.classify(m, inputs, [rnd], plan=bound, ts=[1e-3, 1e-2, 1e-1])
    assert r["kind"] != "gauge" and not r["in_plan"]


def test_directional_order_leaves_the_model_alone():
    model, x = zoo.relu_mlp()
    before = [p.dtype for p in model.parameters()]
    n = sum(p.numel() for p in model.parameters())
    measure.directional_order(model, x, torch.ones(n))
    assert [p.dtype for p in model.parameters()] == before


def _ln_net(norm):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), norm, nn.Linear(6, 3)).double()
    with torch.no_grad():
        net[1].weight.copy_(1 + 0.5 * torch.rand(6, dtype=torch.float64))
        if getattr(net[1], "bias", None) is not None:
            net[1].bias.zero_()
    return net


def test_layernorm_kernel_is_gamma_inverse_and_rmsnorm_has_none():
    x = torch.randn(64, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (64,))
    ln = _ln_net(nn.LayerNorm(6, bias=True))
    r = measure.layer_readings(ln, x, y, "1")
    assert r.sigma_min < 1e-10 * r.activation_spectrum[0]
    # the kernel direction of X is γ⁻¹ (β = 0 here)
    with torch.no_grad():
        X = ln[1](ln[0](x))
    v = torch.linalg.svd(X).Vh[-1]
    ginv = 1 / ln[1].weight.detach()
    assert abs(float(v @ ginv / ginv.norm())) == pytest.approx(1.0, abs=1e-8)
    rms = measure.layer_readings(_ln_net(nn.RMSNorm(6)), x, y, "1")
    assert rms.sigma_min > 1e-3 * rms.activation_spectrum[0]


def test_fisher_gram_counts_dead_directions_and_the_cutoff_matters():
    """Readings after Linear(5, 6) -> LayerNorm: the loss gradient w.r.t. the LN input is orthogonal to the
    ones vector (one dead eigenvalue); a cutoff above it miscounts."""
    x = torch.randn(64, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (64,))
    ln = _ln_net(nn.LayerNorm(6))
    r = measure.layer_readings(ln, x, y, "0")
    assert r.n_dead == 1 and r.n_active == 5
    assert np.isfinite(r.logdet_plus) and r.lambda_min_plus > r.cutoff
    loose = measure.layer_readings(ln, x, y, "0", rel_cutoff=0.9)
    assert loose.n_dead > 1
    true = measure.layer_readings(ln, x, None, "0", fisher="true", likelihood="categorical")
    assert true.n_dead == 1


def _relu_net_and_plan(n_samples):
    """A float64 Linear(3, 4) -> ReLU -> Linear(4, 2) classifier, its data and its plan."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x = torch.randn(n_samples, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (n_samples,))
    return model, x, y, gaugec.compile(model, (x,))


def test_rescale_charge_drifts_by_half_lr_squared_gSg_per_sgd_step():
    """For every generator of a rescale, one plain SGD step changes ½θᵀAθ by exactly ½η²gᵀAg (float64)."""
    model, x, y, plan = _relu_net_and_plan(16)
    (resc,) = [g for g in plan.gauges if g.family == "positive_rescale"]
    As = measure.generator_matrices(plan, resc)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    loss = nn.functional.cross_entropy(model(x), y)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, list(model.parameters()))])
    lr = 0.3
    new = theta - lr * g
    for A in As:
        assert torch.allclose(A, A.T)
        dq = 0.5 * float(new @ A @ new) - 0.5 * float(theta @ A @ theta)
        assert dq == pytest.approx(measure.predicted_sgd_drift(A, g, lr), rel=1e-9, abs=1e-14)
    q = measure.charges(plan)
    assert q.shape[0] == sum(gg.dim for gg in plan.gauges)


def test_rrr_learning_coefficient_grid_and_cases():
    from fractions import Fraction

    from gaugec.measure.rlct import rrr_learning_coefficient as lam

    grid = {(2, 1): 9.0, (2, 2): 13.0, (3, 1): 11.0, (3, 2): 14.5, (3, 3): 18.0, (4, 1): 13.0, (4, 2): 16.0,
            (4, 3): 19.0, (4, 4): 22.0, (5, 1): 15.0, (5, 2): 17.5, (5, 3): 20.0, (5, 4): 22.5, (5, 5): 25.0}
    assert len(grid) == 14
    for (H, r), value in grid.items():                    # input 10, output 5: case 3 in every cell
        assert lam(10, 5, H, r) == (Fraction(value), 1)
    for M, N, H in [(3, 4, 2), (6, 2, 3), (4, 4, 4), (7, 3, 5)]:
        for r in range(H + 1):
            assert lam(M, N, H, r) == lam(N, M, H, r)     # transposing the problem swaps cases 2 and 3
        assert lam(M, N, H, H)[0] == Fraction(H * (M + N - H), 2) or M + N < 2 * H   # dim of rank-H maps / 2
    assert lam(1, 1, 1, 0) == (Fraction(1, 2), 2)          # y = a b x at 0: λ = 1/2, multiplicity 2
    assert lam(1, 1, 2, 0) == (Fraction(1, 2), 1)          # (a1 b1 + a2 b2) x: λ = 1/2
    assert lam(2, 2, 5, 1) == (Fraction(2), 1)             # case 4: more hidden units than M + N - r: M N / 2
    with pytest.raises(ValueError):
        lam(3, 3, 2, 3)


def test_rrr_grid_readings_track_lambda_with_the_reported_signs():
    """On the trained grid (a short budget: 1,000 samples, 1,000 Adam steps), the bottleneck's σ_min(X_h) rises
    with λ within a width, and the output layer's active volume log det⁺(G_out) (width 5 in every cell) falls with λ
    across all 14 cells: the signs the DDS paper reports for the activation and the Fisher side."""
    from gaugec.bench.readings import _grid_rows, rank_agreement

    rows = _grid_rows(seeds=(0,), steps=1000, n=1000, with_llc=False)
    assert len(rows) == 14
    agree = rank_agreement(rows, ["sigma_min_h", "logdet_plus_out"])
    assert agree["sigma_min_h"]["within"][0] > 0.6, agree
    assert agree["logdet_plus_out"]["all"][0] < -0.4, agree

def _bridge(L, d, r, t):
    return zoo.deep_linear_bridge(L, d, r, t)


def _bridge_slopes(L, ell, r, ts, rel_cutoff=1e-12):
    gen = torch.Generator().manual_seed(0)
    d, N = 6, 400
    x = torch.randn(N, d, generator=gen, dtype=torch.float64)
    y = x + 0.5 * torch.randn(N, d, generator=gen, dtype=torch.float64)   # noisy labels: teacher = identity
    rs = [measure.layer_readings(_bridge(L, d, r, t), x, y, str(ell - 1), likelihood="gaussian",
                                 rel_cutoff=rel_cutoff) for t in ts]
    return {
        "sigma2": measure.loglog_slope(ts, [q.sigma_min ** 2 for q in rs]),
        "lambda": measure.loglog_slope(ts, [q.lambda_min_plus for q in rs]),
        "logdet": measure.loglog_slope(ts, [q.logdet_plus for q in rs], log_values=True),
        "n_dead": [q.n_dead for q in rs],
    }


@pytest.mark.parametrize("ell", [1, 2])
def test_deep_linear_bridge_rates_and_counting_identity(ell):
    L = 3
    ts = np.logspace(-2, -0.7, 6)
    slopes = {r: _bridge_slopes(L, ell, r, ts) for r in (1, 2, 3, 4)}
    for r, s in slopes.items():
        assert s["sigma2"][0] == pytest.approx(2 * ell, abs=0.05)             # activation side: 2ℓ
        assert s["lambda"][0] == pytest.approx(2 * (L - ell), abs=0.1)        # Fisher side: 2(L − ℓ), any r
        assert s["logdet"][0] / slopes[1]["logdet"][0] == pytest.approx(r, rel=0.05)   # log det⁺ counts r
        assert s["n_dead"] == [0] * len(ts)      # every dead eigenvalue stays above the cutoff on this grid


def test_a_cutoff_above_the_dead_eigenvalues_breaks_the_count():
    L, ell = 3, 1
    ts = np.logspace(-2, -0.7, 6)
    honest = _bridge_slopes(L, ell, 3, ts)
    loose = _bridge_slopes(L, ell, 3, ts, rel_cutoff=1e-3)   # above the smallest dead eigenvalue for small t
    assert honest["logdet"][0] == pytest.approx(3 * 2 * (L - ell), rel=0.05)
    assert loose["logdet"][0] < 0.5 * honest["logdet"][0]
    assert max(loose["n_dead"]) == 3


def test_measure_command_and_checkpoint_errors(tmp_path, capsys):
    from gaugec.cli import main

    model, _ = zoo.relu_mlp()
    good = tmp_path / "good.pt"
    torch.save(model.state_dict(), good)
    out = str(tmp_path / "plots")
    assert main(["measure", "zoo:relu_mlp", "--checkpoint", str(good), "--samples", "8", "--top", "1",
                 "--out", out]) == 0
    text = capsys.readouterr().out
    assert "positive_rescale@0" in text and "gauge" in text and "in plan" in text
    wrong = tmp_path / "wrong.pt"
    torch.save(nn.Linear(2, 2).state_dict(), wrong)
    assert main(["measure", "zoo:relu_mlp", "--checkpoint", str(wrong), "--out", out]) == 2
    assert "does not match the model" in capsys.readouterr().err
    broken = tmp_path / "broken.pt"
    broken.write_bytes(good.read_bytes()[:100])
    assert main(["measure", "zoo:relu_mlp", "--checkpoint", str(broken), "--out", out]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_charge_monitor_decays_as_exp_minus_2_lambda_t_under_weight_decay():
    model, x, y, plan = _relu_net_and_plan(32)
    plan.gauges = [g for g in plan.gauges if g.family == "positive_rescale"]
    mon = measure.ChargeMonitor(plan)
    q0 = mon.record()
    lr, wd, steps = 1e-3, 0.5, 400
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        with torch.no_grad():                 # decoupled, uniform weight decay
            for p in model.parameters():
                p.mul_(1 - lr * wd)
        opt.step()
    q = mon.record()
    predicted = measure.ChargeMonitor.predicted_decay(q0, wd, lr * steps)
    # the O(η²) SGD drift and the discretisation are the only differences: well under 1% of the charges
    assert torch.allclose(q, predicted, rtol=1e-2, atol=1e-2 * float(q0.abs().max()))
    # without decay, gradient flow conserves them: a small-step SGD run barely moves them
    mon2 = measure.ChargeMonitor(plan)
    mon2.record()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    mon2.record()
    assert float(mon2.drift().abs().max()) < 1e-6


def test_readings_along_saved_checkpoints_recover_the_bridge_rates(tmp_path):
    """Checkpoints saved along the bridge's approach read the same rates as the constructed curve."""
    L, ell, r = 3, 2, 2
    ts = np.logspace(-2, -0.7, 5)
    paths = []
    for i, t in enumerate(ts):
        path = tmp_path / f"step{i}.pt"
        torch.save(_bridge(L, 6, r, t).state_dict(), path)
        paths.append(str(path))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=gen, dtype=torch.float64)
    y = x + 0.5 * torch.randn(400, 6, generator=gen, dtype=torch.float64)
    model = _bridge(L, 6, r, 1.0)
    out = measure.readings_along(model, paths, x, y, str(ell - 1), ts=ts, likelihood="gaussian", rel_cutoff=1e-12)
    assert out.slopes["sigma2_min"][0] == pytest.approx(2 * ell, abs=0.05)
    assert out.slopes["lambda_min_plus"][0] == pytest.approx(2 * (L - ell), abs=0.1)
    assert out.slopes["logdet_plus"][0] == pytest.approx(r * 2 * (L - ell), rel=0.05)
    assert all(float(lin.weight[0, 0]) == 1.0 for lin in model)          # the architecture model is untouched
    with pytest.raises(ValueError, match="does not fit"):
        measure.readings_along(nn.Sequential(nn.Linear(6, 5)).double(), paths, x, y, "0")
    with pytest.raises(ValueError, match="one positive"):
        measure.readings_along(model, paths, x, y, "0", ts=ts[:2])


def test_measure_command_reads_along_checkpoints(tmp_path, capsys):
    from gaugec import zoo
    from gaugec.cli import main

    model, _ = zoo.relu_mlp()
    paths = []
    for i, scale in enumerate((0.1, 0.3, 1.0)):
        state = {k: v * scale for k, v in model.state_dict().items()}
        paths.append(str(tmp_path / f"c{i}.pt"))
        torch.save(state, paths[-1])
    assert main(["measure", "zoo:relu_mlp", "--along", *paths, "--ts", "0.1", "0.3", "1", "--layer", "2"]) == 0
    out = capsys.readouterr().out
    assert "layer 2" in out and "slope of sigma2_min" in out and out.count("\n") >= 7
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["measure", "zoo:relu_mlp", "--along", paths[0], str(bad)]) == 2
    assert main(["measure", "zoo:relu_mlp", "--along", paths[0], paths[1], "--ts", "1"]) == 2


def test_likelihood_is_inferred_from_the_targets_and_bad_directions_are_errors():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(40, 3, dtype=torch.float64)
    y_reg = torch.randn(40, 2, dtype=torch.float64)
    y_cls = torch.randint(0, 2, (40,))
    assert measure.infer_likelihood(None, y_reg) == "gaussian"
    assert measure.infer_likelihood(None, y_cls) == "categorical"
    reg = measure.layer_readings(net, x, y_reg, "0")
    explicit = measure.layer_readings(net, x, y_reg, "0", likelihood="gaussian")
    assert reg.spectrum.tolist() == explicit.spectrum.tolist()
    with pytest.raises(ValueError, match="does not fit floating-point targets"):
        measure.layer_readings(net, x, y_reg, "0", likelihood="categorical")
    with pytest.raises(ValueError, match="pass likelihood="):
        measure.layer_readings(net, x, None, "0", fisher="true")
    n = sum(p.numel() for p in net.parameters())
    for bad in (torch.zeros(n), torch.full((n,), float("nan"))):
        with pytest.raises(ValueError, match="zero or holds NaN"):
            measure.directional_order(net, (x,), bad, likelihood="gaussian")
