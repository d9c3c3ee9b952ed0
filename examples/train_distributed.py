"""Train the character LM with FSDP2 (or DDP) + DDCAdam on several processes.

    torchrun --nproc-per-node 2 examples/train_distributed.py                 # CPU (gloo)
    torchrun --nproc-per-node 2 examples/train_distributed.py --device cuda   # GPUs (nccl)
    torchrun --nproc-per-node 2 examples/train_distributed.py --mode ddp --steps 300

The plan is compiled once on the whole model before it is sharded; each rank then trains on its own share of every
batch (the gradients FSDP2 averages over the ranks are the whole batch's), and DDCAdam keeps every gauge orbit on
its canonical section with one small all-reduce per balancing stage (docs/ddc.md, "Distributed"). Rank 0 shows a
progress bar and saves a distributed checkpoint (model and optimizer) at the end with ``--checkpoint DIR``.
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

import gaugec
from gaugec.optim import DDCAdam, tasks
from gaugec.progress import Progress


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["fsdp2", "ddp"], default="fsdp2")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16, help="the whole batch, split over the ranks")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--checkpoint", help="save model + optimizer here at the end (torch.distributed.checkpoint)")
    args = ap.parse_args(argv)

    cuda = args.device.startswith("cuda")
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank != 0:
        os.environ["GAUGEC_PROGRESS"] = "0"        # one status line: rank 0's
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} does not split over {world} ranks")

    text = tasks.char_corpus()
    split = int(0.9 * len(text))
    train, val = text[:split], text[split:]
    model = tasks.char_llama().to(device)
    example = (train[:args.seq].unsqueeze(0).to(device),)
    plan = gaugec.compile(model, example)                      # the whole model, before sharding
    if args.mode == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (world,))
        for layer in model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        wrapped = model
    else:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if cuda else None)
    opt = DDCAdam(model.parameters(), plan.bind(model), lr=args.lr, weight_decay=args.weight_decay)

    gen = torch.Generator().manual_seed(0)                     # the same batches on every rank

    def batch_of(src, g, n):
        idx = torch.randint(0, len(src) - args.seq - 1, (n,), generator=g).tolist()
        x = torch.stack([src[i:i + args.seq] for i in idx]).to(device)
        y = torch.stack([src[i + 1:i + args.seq + 1] for i in idx]).to(device)
        return x, y

    def loss_of(x, y):
        logits = wrapped(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))

    share = args.batch // world
    with Progress(f"{args.mode} x{world} + DDCAdam", total=args.steps, quiet=rank != 0) as bar:
        for step in range(1, args.steps + 1):
            x, y = batch_of(train, gen, args.batch)
            opt.zero_grad(set_to_none=True)
            loss = loss_of(x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share])
            loss.backward()
            opt.step()
            bar.update(1, f"loss {float(loss.detach()):.3f}")
    with torch.no_grad():
        x, y = batch_of(val, torch.Generator().manual_seed(10_000), args.batch)
        v = loss_of(x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]).detach()
        dist.all_reduce(v)
    if rank == 0:
        print(f"{args.mode} on {world} ranks: validation loss {float(v) / world:.4f} after {args.steps} steps "
              f"({opt.skipped_steps} skipped)")
    if args.checkpoint:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, opt_sd = get_state_dict(model, opt)
        dcp.save({"model": model_sd, "optim": opt_sd}, checkpoint_id=args.checkpoint)
        if rank == 0:
            print(f"saved {args.checkpoint}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
