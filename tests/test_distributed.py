"""DDCAdam and DDCMuon under torch.distributed on CPU (gloo, 2 processes, float64): FSDP2 (parameters sharded along
dim 0 as DTensors) and DDP train exactly as one process on the whole batch: after 10 steps every parameter agrees to
1e-10; a distributed checkpoint resumes exactly; the torchrun example runs."""
import os

import pytest
import torch
import torch.multiprocessing as mp

from tests import distributed_workers as workers

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")


def _run(tmp_path, name: str, mode: str, kind: str, world: int) -> dict:
    out = str(tmp_path / "out.pt")
    mp.spawn(workers.sharded, args=(world, str(tmp_path / "init"), name, mode, out, kind), nprocs=world, join=True)
    return torch.load(out)


# 3 ranks split the zoo Llama's 8-row projections 3 / 3 / 2: its 4-row head blocks straddle two ranks' shards
@pytest.mark.parametrize("name,mode,kind,world", [
    ("llama", "fsdp2", "adam", 2), ("llama_gqa", "fsdp2", "adam", 2), ("gpt2", "fsdp2", "adam", 2),
    ("hf_llama", "fsdp2", "adam", 2), ("llama", "ddp", "adam", 2), ("llama_gqa", "fsdp2", "muon", 2),
    ("llama", "fsdp2", "adam", 3)])
def test_distributed_training_equals_one_process(tmp_path, name, mode, kind, world):
    if name.startswith("hf_"):
        pytest.importorskip("transformers")
    reference = workers.single(name, kind)
    got = _run(tmp_path, name, mode, kind, world)
    start = workers.build(name)[0].state_dict()
    assert got["skipped"] == 0
    moved = max(float((reference[k] - start[k].double()).abs().max()) for k in reference)
    assert moved > 0.1                                   # it trained
    for k, v in reference.items():
        assert torch.allclose(got["state"][k], v, rtol=0, atol=1e-10), (k, float((got["state"][k] - v).abs().max()))


def test_distributed_checkpoint_resumes_exactly(tmp_path):
    """FSDP2 + DDCAdam saved with torch.distributed.checkpoint after 5 of 10 steps: resumed on 2 ranks it continues
    bit for bit; resumed on 1 rank it continues to rounding."""
    ckpt = str(tmp_path / "ckpt")

    def run(world, phase, tag):
        out = str(tmp_path / f"{tag}.pt")
        mp.spawn(workers.checkpointed, args=(world, str(tmp_path / f"init-{tag}"), "llama", ckpt, phase, out),
                 nprocs=world, join=True)
        return torch.load(out)

    straight = run(2, "save", "a")
    resumed = run(2, "resume", "b")
    single = run(1, "resume", "c")
    for k, v in straight.items():
        assert torch.equal(resumed[k], v), k
        assert torch.allclose(single[k], v, rtol=0, atol=1e-10), (k, float((single[k] - v).abs().max()))


def test_the_torchrun_example_trains(tmp_path):
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torchrun is not installed next to this python"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ckpt = tmp_path / "ckpt"
    proc = subprocess.run([torchrun, "--nproc-per-node", "2", os.path.join(root, "examples", "train_distributed.py"),
                           "--steps", "3", "--batch", "4", "--seq", "16", "--checkpoint", str(ckpt)],
                          capture_output=True, text=True, timeout=300, cwd=root,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fsdp2 on 2 ranks: validation loss" in proc.stdout and "(0 skipped)" in proc.stdout
    assert (ckpt / ".metadata").exists()
