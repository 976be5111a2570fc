"""Two gloo ranks on localhost, each saving its Shard(0) half of a DTensor with ``dcp.save``.

Run as ``python dcp_ranks.py FOLDER PORT`` (by test_dcp_read, in a subprocess so that no process group or
spawned worker touches the test process). The full tensor is ``torch.randn(9, 4)`` after ``manual_seed(0)``.
"""

from __future__ import annotations

import os
import sys
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def full_tensor() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(9, 4)


def save_rank(rank: int, world: int, folder: str, port: int) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    warnings.simplefilter("ignore")
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        sharded = distribute_tensor(full_tensor(), mesh, [Shard(0)])
        dcp.save({"model": {"w": sharded, "b": torch.arange(3.0)}}, checkpoint_id=folder)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(save_rank, args=(2, sys.argv[1], int(sys.argv[2])), nprocs=2, join=True)
