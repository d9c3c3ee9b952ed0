"""FSDP2 + DDCAdam on CPU processes (gloo): the optimizer state each rank holds, against one process's, and the
step time of FSDP2 + DDCAdam against FSDP2 + torch's fused AdamW, interleaved in one run."""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch

from gaugec.bench.tables import md_table

CONFIG = dict(vocab=128, d=256, n_layers=4, n_heads=8, n_kv_heads=4, d_ff=512)


def _local_bytes(t) -> int:
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def _worker(rank: int, world: int, init_file: str, out: str, repeats: int):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        import gaugec
        from gaugec.optim import DDCAdam, tasks
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        model = tasks.char_llama(**CONFIG)
        ids = torch.randint(0, CONFIG["vocab"], (4, 64), generator=torch.Generator().manual_seed(0))
        plan = gaugec.compile(model, (ids[:1],), check=False)
        mesh = init_device_mesh("cpu", (world,))
        for layer in model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        ddc = DDCAdam(model.parameters(), plan.bind(model), lr=1e-4, weight_decay=0.1)
        adamw = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
        logits = model(ids)
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1)).backward()
        times = {"AdamW": [], "DDCAdam": []}
        for i in range(repeats + 2):                   # two warm-up rounds (state allocation), then interleaved
            for name, opt in (("AdamW", adamw), ("DDCAdam", ddc)):
                dist.barrier()
                t = time.perf_counter()
                opt.step()
                dist.barrier()
                if i >= 2:
                    times[name].append(time.perf_counter() - t)
        state = sum(_local_bytes(v) for st in ddc.state.values() for v in st.values() if torch.is_tensor(v))
        index = sum(_local_bytes(t) for st in ddc._local_executor.stages for rg in st.groups
                    for t in (rg.rows, rg.blocks))
        row = torch.tensor([state + index, *(float(np.median(v)) for v in times.values())], dtype=torch.float64)
        rows = [torch.zeros_like(row) for _ in range(world)]
        dist.all_gather(rows, row)
        if rank == 0:
            torch.save({"rows": torch.stack(rows), "params": sum(p.numel() for p in model.parameters())}, out)
    finally:
        dist.destroy_process_group()


def bench_distributed(worlds=(1, 2, 4), repeats: int = 10) -> list[dict]:
    import torch.multiprocessing as mp

    rows = []
    for world in worlds:
        folder = tempfile.mkdtemp(prefix="gaugec-dist-")
        out = os.path.join(folder, "out.pt")
        mp.spawn(_worker, args=(world, os.path.join(folder, "init"), out, repeats), nprocs=world, join=True)
        got = torch.load(out)
        r = got["rows"]
        rows.append({"world": world, "params": got["params"], "state_per_rank": r[:, 0].tolist(),
                     "adamw_ms": float(r[:, 1].max()) * 1e3, "ddc_ms": float(r[:, 2].max()) * 1e3})
        print(rows[-1], flush=True)
    return rows


def format_distributed(rows) -> str:
    one = next((r for r in rows if r["world"] == 1), rows[0])
    total = sum(one["state_per_rank"])
    return "\n".join(md_table(
        ["ranks", "parameters", "DDCAdam state per rank (MiB, max)", "per rank / one process", "FSDP2 + AdamW ms",
         "FSDP2 + DDCAdam ms", "DDCAdam / AdamW"],
        [[r["world"], f"{r['params'] / 1e6:.1f}M", f"{max(r['state_per_rank']) / 2**20:.2f}",
          f"{max(r['state_per_rank']) / total:.3f} (1/{r['world']} = {1 / r['world']:.3f})",
          f"{r['adamw_ms']:.1f}", f"{r['ddc_ms']:.1f}", f"{r['ddc_ms'] / r['adamw_ms']:.2f}x"] for r in rows]))
