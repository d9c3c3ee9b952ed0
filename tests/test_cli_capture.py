"""CLI (inspect / check / verify), lock files, capture errors and barriers."""
import json

import pytest
import torch
import torch.nn as nn

import gaugec
from gaugec.capture import CaptureError
from gaugec.cli import main

FACTORY_FILE = '''
import torch, torch.nn as nn

class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(3, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.l(x)
        return -self.l(x)

def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)), (torch.randn(3, 4),)

def branchy():
    return Branchy(), (torch.randn(2, 3),)
'''


@pytest.fixture()
def factory_file(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(FACTORY_FILE)
    return str(path)


def test_inspect_prints_the_table(capsys):
    assert main(["inspect", "zoo:llama"]) == 0
    out = capsys.readouterr().out
    for word in ("attention_qk_rope", "(R+ x SO(2))^4", "GL(4)^2", "R*^12", "proved", "O(8)", "orbit dimension (rank) 113"):
        assert word in out


def test_inspect_json_is_a_plan(capsys):
    assert main(["inspect", "zoo:relu_mlp", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format"] == "gaugec-plan/1" and len(data["gauges"]) == 3


def test_inspect_explain_lists_refusals_and_lemmas(capsys):
    assert main(["inspect", "zoo:gelu_mlp", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "not positively homogeneous" in out and "stopped at gelu" in out
    assert "softmax_shift" in out


def test_check_lock_cycle(tmp_path, factory_file, capsys):
    lock = tmp_path / "gauges.lock"
    target = f"{factory_file}:mlp"
    assert main(["check", target, "--lock", str(lock), "--update"]) == 0
    assert main(["check", target, "--lock", str(lock)]) == 0
    assert "lock matches" in capsys.readouterr().out
    data = json.loads(lock.read_text())
    name = next(iter(data["gauges"]))
    data["gauges"][name]["dim"] = 99
    data["gauges"]["positive_rescale@ghost"] = {"family": "positive_rescale", "group": "R+^2", "dim": 2,
                                                "params": ["x"]}
    lock.write_text(json.dumps(data))
    assert main(["check", target, "--lock", str(lock)]) == 1
    out = capsys.readouterr().out
    assert "CHECK FAILED" in out
    assert f"~ {name}.dim: 99 ->" in out
    assert "- positive_rescale@ghost" in out


def test_check_corrupted_lock_is_a_clear_usage_error(tmp_path, factory_file, capsys):
    lock = tmp_path / "gauges.lock"
    lock.write_text('{"format": "gaugec-lock/1", "gauges": {"x": ')
    assert main(["check", f"{factory_file}:mlp", "--lock", str(lock)]) == 2
    assert "corrupted" in capsys.readouterr().err
    lock.write_text('{"format": "something-else"}')
    assert main(["check", f"{factory_file}:mlp", "--lock", str(lock)]) == 2


def test_untraceable_model_is_a_clear_capture_error(factory_file, capsys):
    assert main(["inspect", f"{factory_file}:branchy"]) == 2
    err = capsys.readouterr().err
    assert "capture failed" in err and "what to try" in err


def test_usage_errors(capsys):
    assert main(["inspect", "zoo:nope"]) == 2
    assert "unknown zoo model" in capsys.readouterr().err
    assert main(["inspect", "no_such_module_xyz:factory"]) == 2
    assert main(["frobnicate"]) == 2


def test_verify_command(capsys):
    assert main(["verify", "zoo:relu_mlp"]) == 0
    assert "nullity" in capsys.readouterr().out


def test_capture_error_names_the_construct():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(CaptureError, match="data-dependent"):
        gaugec.compile(Branchy(), (torch.randn(2, 3),))


class UnknownOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.special.erfinv(0.5 * torch.relu(self.a(x)).clamp(max=1.0)))


def test_an_op_without_a_rule_is_a_barrier_and_reported():
    plan = gaugec.compile(UnknownOp(), (torch.randn(2, 3),), loss=None)
    assert "special_erfinv" in plan.unknown_ops
    assert all(g.family != "positive_rescale" for g in plan.gauges)


class ReluThroughUnknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.special.erfinv(torch.relu(self.a(x))))


def test_unknown_op_reached_by_a_probe_is_counted():
    plan = gaugec.compile(ReluThroughUnknown(), (torch.rand(2, 3) * 0.1,), loss=None)
    assert plan.unknown_ops.get("special_erfinv", 0) >= 1
    assert any("no rule for op 'special_erfinv'" in r.reason for r in plan.refusals)


def test_meta_device_models_compile_without_weights():
    from gaugec.zoo import TinyLlama

    with torch.device("meta"):
        model = TinyLlama(vocab=16, d=8, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=12, eps=0.0)
    plan = gaugec.compile(model, (torch.randint(0, 16, (2, 6)),))
    assert plan.dim == 113
    assert {g.family for g in plan.gauges} == {"norm_gain", "attention_qk_rope", "attention_vo", "glu_rescale",
                                               "logit_shift", "norm_input_scale", "residual_rotation"}
    assert all(g.proof.symbolic_ok for g in plan.gauges)


def test_fx_tracer_and_graph_module_inputs_agree():
    from gaugec import zoo

    model, inputs = zoo.relu_mlp()
    a = gaugec.compile(model, inputs)
    b = gaugec.compile(model, inputs, tracer="fx")
    gm = torch.fx.symbolic_trace(model)
    c = gaugec.compile(gm, inputs)
    assert [g.group for g in a.gauges] == [g.group for g in b.gauges] == [g.group for g in c.gauges]


def test_exported_program_input():
    from gaugec import zoo
    from gaugec.capture import capture

    model, inputs = zoo.relu_mlp()
    ep = torch.export.export(model, inputs, strict=False)
    gg = capture(ep)
    assert set(gg.placeholder_param.values()) == {n for n, _ in model.named_parameters()}


class NaNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) * float("nan")


def test_non_finite_output_is_reported_not_taken_for_false_gauges():
    with pytest.warns(UserWarning, match="not finite"):
        plan = gaugec.compile(NaNModel(), (torch.randn(2, 3),), loss=None)
    assert not plan.rejected and plan.gauges
    assert all(g.numeric_residual is None and "not finite" in g.proof.numeric_note for g in plan.gauges)


class FlagModel(nn.Module):
    """A forward with a Python flag: fx needs it fixed through concrete_args."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x, flip=False):
        h = torch.relu(self.a(x))
        return self.b(-h if flip else h)


def test_fx_route_with_concrete_args_and_error_listing_both_tracers():
    with pytest.raises(CaptureError, match="symbolic_trace failed"):
        gaugec.compile(FlagModel(), (torch.randn(2, 3),), loss=None, tracer="fx")
    plan = gaugec.compile(FlagModel(), (torch.randn(2, 3),), loss=None, tracer="fx",
                          concrete_args={"flip": False})
    assert [g.family for g in plan.gauges] == ["positive_rescale"]

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(CaptureError) as info:
        gaugec.compile(Branchy(), (torch.randn(2, 3),))
    msg = str(info.value)
    assert "torch.export (non-strict) failed" in msg and "symbolic_trace failed" in msg


# -- every failure: its exit code and one line ----------------------------------------------------------------------

BROKEN_FILE = '''
import torch, torch.nn as nn
import gaugec_no_such_dependency

def f():
    return nn.Linear(2, 2), (torch.randn(1, 2),)
'''

ODD_FILE = '''
import torch, torch.nn as nn

def no_params():
    return nn.ReLU(), (torch.randn(2, 3),)

def raises():
    raise RuntimeError("the factory fell over\\nwith a second line")
'''


def _one_line_error(capsys, *words) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


def test_each_failure_mode_is_one_line_with_its_exit_code(tmp_path, factory_file, capsys):
    broken, odd = tmp_path / "broken.py", tmp_path / "odd.py"
    broken.write_text(BROKEN_FILE)
    odd.write_text(ODD_FILE)
    assert main(["inspect", f"{broken}:f"]) == 2
    _one_line_error(capsys, "gaugec_no_such_dependency", "--debug")
    assert main(["verify", f"{odd}:no_params"]) == 2
    _one_line_error(capsys, "no parameters")
    assert main(["inspect", f"{odd}:raises"]) == 2
    _one_line_error(capsys, "RuntimeError", "the factory fell over with a second line")
    assert main(["inspect", "--debug", f"{odd}:raises"]) == 2
    assert "Traceback" in capsys.readouterr().err
    assert main(["measure", "zoo:relu_mlp", "--layer", "nope", "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, "'nope' is not a submodule")
    from gaugec import zoo

    relu, _ = zoo.relu_mlp()
    state = relu.state_dict()
    state["2.weight"][0, 0] = float("nan")
    nan_ckpt = tmp_path / "nan.pt"
    torch.save(state, nan_ckpt)
    assert main(["measure", "zoo:relu_mlp", "--checkpoint", str(nan_ckpt), "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, "2.weight holds NaN")
    assert main(["check", f"{factory_file}:mlp", "--lock", str(tmp_path / "no" / "dir" / "x.lock"), "--update"]) == 2
    _one_line_error(capsys, "cannot write lock file")
    assert main(["verify", "zoo:relu_mlp"]) == 0                     # and a check that holds is still 0


def test_a_failing_lock_update_keeps_the_old_lock(tmp_path, factory_file, capsys, monkeypatch):
    import gaugec.cli as cli

    lock = tmp_path / "gauges.lock"
    assert main(["check", f"{factory_file}:mlp", "--lock", str(lock), "--update"]) == 0
    old = lock.read_text()

    def half_written(data, fh, **kw):
        fh.write('{"format": "gaugec-lock/1", "gau')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli.json, "dump", half_written)
    capsys.readouterr()
    assert main(["check", f"{factory_file}:mlp", "--lock", str(lock), "--update"]) == 2
    _one_line_error(capsys, "No space left on device", "old lock")
    assert lock.read_text() == old
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".gaugec-lock")] == []


def test_a_data_dependent_shape_is_a_barrier_not_a_crash():
    """Masked indexing gives a tensor of data-dependent (unbacked) size: strict discovery compiles the model, seeds
    nothing on that tensor and claims nothing through it (the engine once called int() on the size)."""
    class Masked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2, self.l3 = torch.nn.Linear(4, 6), torch.nn.Linear(6, 3), torch.nn.Linear(4, 3)

        def forward(self, x):
            h = torch.relu(self.l1(x))
            return self.l2(h[h.sum(-1) > 0]).sum(0, keepdim=True) + self.l3(x).sum(0, keepdim=True)

    model = Masked().double()
    plan = gaugec.compile(model, (torch.randn(5, 4, dtype=torch.float64),), loss=None, strict=True)
    assert all(lg.param not in ("l2.weight", "l2.bias") for g in plan.gauges for lg in g.legs)


def test_an_in_place_write_into_another_tensor_is_followed_to_a_barrier():
    """``buf[:, 2:] = l1(x)`` is a copy_ into a view of ``buf``: nothing in the graph's edges says that ``buf``'s
    readers depend on l1, so the GL probe of l1 once never ran and a false GL(6) reached the numeric check (DeepSeek's
    key_states[..., d:] = k_pe). The write is followed, and it is a barrier."""
    class Write(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = torch.nn.Linear(4, 6), torch.nn.Linear(8, 3)

        def forward(self, x):
            buf = x.new_zeros(x.shape[0], 8)
            buf[:, 2:] = self.l1(x)
            return self.l2(buf)

    model = Write().double()
    plan = gaugec.compile(model, (torch.randn(5, 4, dtype=torch.float64),), loss=None, strict=True)
    assert not plan.rejected
    assert all(lg.param != "l1.weight" for g in plan.gauges for lg in g.legs)
    assert any("in-place write" in r.reason for r in plan.refusals)


# -- Hugging Face targets ------------------------------------------------------------------------------------------

def _hf_dir(tmp_path, hidden=16, name="tiny-llama"):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=hidden, intermediate_size=24, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16,
                                   rms_norm_eps=0.0, architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    path = tmp_path / name
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return str(path)


@pytest.mark.hf
def test_hf_directory_targets_on_the_meta_device_and_with_their_weights(tmp_path, capsys):
    path = _hf_dir(tmp_path)
    assert main(["inspect", f"hf:{path}"]) == 0
    out = capsys.readouterr().out
    assert "residual_rotation" in out and "not ranked (the meta device" in out
    assert main(["check", f"hf:{path}"]) == 0
    assert "NO numeric check ran" in capsys.readouterr().out      # never "every numeric check passed" without weights
    assert main(["check", f"hf:{path}", "--weights"]) == 0
    assert "every numeric check passed" in capsys.readouterr().out
    assert main(["verify", f"hf:{path}"]) == 2
    assert "needs weights" in capsys.readouterr().err
    assert main(["verify", f"hf:{path}", "--weights"]) == 0


@pytest.mark.hf
def test_hf_target_errors_name_what_is_wrong(tmp_path, capsys):
    from gaugec.capture import hf

    (tmp_path / "empty").mkdir()
    assert main(["inspect", f"hf:{tmp_path / 'empty'}"]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert main(["inspect", "hf:lama"]) == 2
    assert "did you mean llama" in capsys.readouterr().err
    assert main(["inspect", "zoo:llama", "--weights"]) == 2
    assert "--weights is for hf:DIR" in capsys.readouterr().err
    # weights of another size in the directory
    path = _hf_dir(tmp_path)
    other = _hf_dir(tmp_path, hidden=8, name="other")
    import shutil
    shutil.copy(f"{other}/model.safetensors", f"{path}/model.safetensors")
    assert main(["check", f"hf:{path}", "--weights"]) == 2
    assert "do not match the model (wrong shape" in capsys.readouterr().err
    # a model type's default config, on the meta device, with token ids below its vocabulary
    model, (ids,) = hf.load("bert")
    assert all(p.is_meta for p in model.parameters()) and int(ids.max()) < model.config.vocab_size
