"""Workers for tests/test_distributed.py: each runs on one rank of a gloo process group (CPU, float64) and rank 0
saves what the test compares. Kept in their own module so that spawned processes can import them."""
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

STEPS = 10


class Logits(torch.nn.Module):
    """A Hugging Face causal LM returning its logits tensor (the training loop reads a tensor)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(ids).logits


def build(name: str):
    """(model in float64, example inputs, a batch of 4 sequences) for a zoo model or "hf_llama" (a 2-layer Hugging
    Face Llama with GQA), the same on every rank."""
    from gaugec import zoo

    if name == "hf_llama":
        import transformers

        cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                       use_cache=False)
        torch.manual_seed(0)
        model = Logits(transformers.LlamaForCausalLM(cfg))
        inputs = (torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(0)),)
    else:
        model, inputs = zoo.load(name)
    model = model.double()
    gen = torch.Generator().manual_seed(1)
    vocab = next(m for m in model.modules() if isinstance(m, torch.nn.Embedding)).num_embeddings
    ids = torch.randint(0, vocab, (12, inputs[0].shape[1]), generator=gen)   # splits over 1, 2, 3 or 4 ranks
    return model, inputs, ids


def loss_of(model, ids):
    logits = model(ids[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def train(model, opt, ids, steps: int = STEPS):
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_of(model, ids).backward()
        opt.step()


def optimizer(kind: str, model, plan):
    from gaugec.optim import DDCAdam, DDCMuon

    if kind == "muon":
        return DDCMuon(model.parameters(), plan, lr=2e-2, adamw_lr=1e-2, weight_decay=0.1)
    return DDCAdam(model.parameters(), plan, lr=1e-2, weight_decay=0.1)


def single(name: str, kind: str = "adam") -> dict:
    """The reference: one process, the whole batch."""
    import gaugec

    model, inputs, ids = build(name)
    plan = gaugec.compile(model, inputs)
    opt = optimizer(kind, model, plan)
    train(model, opt, ids)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _init(rank: int, world: int, init_file: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)


def sharded(rank: int, world: int, init_file: str, name: str, mode: str, out: str, kind: str = "adam"):
    """``mode``: "fsdp2" (fully_shard per layer and at the root) or "ddp"; each rank trains on its share of the
    batch (gradients averaged over the ranks equal the whole batch's)."""
    _init(rank, world, init_file)
    try:
        import gaugec

        model, inputs, ids = build(name)
        plan = gaugec.compile(model, inputs)          # on the whole model, before sharding
        if mode == "fsdp2":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cpu", (world,))
            layers = next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList))
            for layer in layers:
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            wrapped = model
        else:
            wrapped = torch.nn.parallel.DistributedDataParallel(model)
        opt = optimizer(kind, model, plan.bind(model))
        share = ids.shape[0] // world
        train(wrapped, opt, ids[rank * share:(rank + 1) * share])
        state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
                 for k, v in model.state_dict().items()}
        if rank == 0:
            torch.save({"state": state, "skipped": opt.skipped_steps}, out)
        dist.barrier()
    finally:                 # a rank that raised leaves at once: the spawner reports it (a barrier would hang)
        dist.destroy_process_group()


def _fsdp2(model, world: int):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    layers = next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def checkpointed(rank: int, world: int, init_file: str, name: str, ckpt: str, phase: str, out: str):
    """FSDP2 + DDCAdam with a distributed checkpoint (torch.distributed.checkpoint, model and optimizer):
    ``phase`` "save": 5 steps, save, 5 more steps; "resume": load, the same 5 more steps. Rank 0 saves the final
    parameters (whole) to ``out``."""
    _init(rank, world, init_file)
    try:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        import gaugec
        from gaugec.optim import DDCAdam

        model, inputs, ids = build(name)
        plan = gaugec.compile(model, inputs)
        _fsdp2(model, world)
        opt = DDCAdam(model.parameters(), plan.bind(model), lr=1e-2, weight_decay=0.1)
        share = ids.shape[0] // world
        mine = ids[rank * share:(rank + 1) * share]
        if phase == "save":
            train(model, opt, mine, 5)
            model_sd, opt_sd = get_state_dict(model, opt)
            dcp.save({"model": model_sd, "optim": opt_sd}, checkpoint_id=ckpt)
        else:
            model_sd, opt_sd = get_state_dict(model, opt)
            state = {"model": model_sd, "optim": opt_sd}
            dcp.load(state, checkpoint_id=ckpt)
            set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        train(model, opt, mine, 5)
        final = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
                 for k, v in model.state_dict().items()}
        if rank == 0:
            torch.save(final, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()
