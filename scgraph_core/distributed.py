"""Training on several processes with PyTorch's DistributedDataParallel, launched by ``torchrun``.

``torchrun --nproc_per_node 4 -m scgraph_core train --model cellvgae --batch-size 4096 ...`` starts four
processes (ranks). Each reads the input and builds the same graph (both are deterministic), then trains its
share of every epoch's batches; DistributedDataParallel averages the gradients after each step, so the
weights stay identical on every rank. NCCL joins GPUs (one per process, ``LOCAL_RANK``), gloo joins CPU
processes (several cores or machines). Only rank 0 creates and writes the run folder and runs the analysis;
the others stop after training. The models that train on sampled batches (CellVGAE with ``batch_size``) use
it; a full-batch model would only repeat the same step on every rank, so those refuse.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .errors import ConfigError


def launched() -> bool:
    """True inside a process that torchrun started with more than one process in all."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: str = "auto") -> None:
    """Join the process group torchrun describes (environment variables); NCCL on GPUs, gloo on CPUs."""
    if not launched() or active():
        return
    if not torch.distributed.is_available():
        raise ConfigError("This PyTorch build has no torch.distributed; run one process instead of torchrun.")
    gpu = device in ("auto", "cuda") and torch.cuda.is_available()
    if gpu:
        torch.cuda.set_device(local_rank())
    torch.distributed.init_process_group(backend="nccl" if gpu else "gloo")


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def device_for(device: torch.device) -> torch.device:
    """Each process its own GPU (``LOCAL_RANK``) when training is distributed on CUDA."""
    if active() and device.type == "cuda":
        return torch.device("cuda", local_rank())
    return device


def wrap(module: torch.nn.Module) -> Any:
    """The module inside DistributedDataParallel when distributed (gradients averaged over the ranks)."""
    if not active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    params = next(module.parameters())
    ids = [params.device.index] if params.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on any (a stop request seen by one rank stops all)."""
    if not active():
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    if torch.distributed.get_backend() == "nccl":
        value = value.cuda()
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


def in_sync(module: torch.nn.Module) -> bool:
    """Whether every rank holds the same weights (their sums agree to float64 rounding)."""
    if not active():
        return True
    total = torch.stack([p.detach().double().sum() for p in module.parameters()]).sum().reshape(1)
    if torch.distributed.get_backend() != "nccl":
        total = total.cpu()
    low, high = total.clone(), total.clone()
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    return bool((high - low).abs().item() <= 1e-9 * max(1.0, abs(total.item())))


def teardown() -> None:
    if active():
        torch.distributed.destroy_process_group()
