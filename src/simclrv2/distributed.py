"""Multi-process training with ``torchrun``: process group, global batch sharding, SyncBatchNorm, DDP,
and the autograd-aware all-gather that gives NT-Xent its negatives from every rank.

Nothing here launches processes: ``torchrun --nproc_per_node N -m simclrv2 ...`` (or the console
script) sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, and :func:`init` joins that group. A single
process without those variables is world size 1 and every function here is a no-op.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init(device_name: str = "auto") -> World:
    """Join the process group that ``torchrun`` describes (NCCL on CUDA, gloo on CPU), once."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_name != "cpu"
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return current()


def current() -> World:
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def device_for(world: World, device_name: str) -> torch.device:
    """Each rank's device: ``cuda:LOCAL_RANK`` under torchrun on GPUs."""
    if device_name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", world.local_rank) if world.distributed else torch.device("cuda")
    if device_name == "auto":
        return torch.device("cpu")
    return torch.device(device_name)


def per_rank_batch(global_batch: int, world: World) -> int:
    """The configured batch size is global; each rank takes an equal part of it."""
    if global_batch % world.size:
        raise ValueError(f"batch_size {global_batch} is not divisible by the world size {world.size}")
    return global_batch // world.size


def shard(world: World):
    """``indices of a global batch -> this rank's contiguous part`` (all ranks share the epoch order)."""
    if not world.distributed:
        return None

    def take(index: Tensor) -> Tensor:
        part = len(index) // world.size
        return index[world.rank * part:(world.rank + 1) * part]

    return take


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's tensor; backward: sum the incoming gradients over ranks, keep own slice."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


class _AllReduce(torch.autograd.Function):
    """Sum over ranks; the gradient of each rank's input is the sum of the gradients of the output."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: Tensor) -> Tensor:
    """All ranks' ``x`` concatenated in rank order. The backward pass sums the gradients that every
    rank's loss sends to each slice and returns its own slice to each rank, so with DDP's gradient
    averaging the encoder gets exactly the single-process gradient of the mean global loss.
    (Every rank must gather tensors of the same shape.)"""
    return _AllGather.apply(x) if _active() else x


def all_reduce_with_grad(x: Tensor) -> Tensor:
    """Sum of ``x`` over ranks, differentiable (global BatchNorm statistics)."""
    return _AllReduce.apply(x) if _active() else x


@torch.no_grad()
def gather(x: Tensor) -> Tensor:
    """All ranks' ``x`` concatenated, without gradient (e.g. keys for the memory buffer)."""
    if not _active():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def mean(value: Tensor) -> Tensor:
    """The mean of a scalar over ranks (what every rank logs and checks for finiteness)."""
    if not _active():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch across all ranks.

    torch's SyncBatchNorm only runs on GPUs; this one runs anywhere a process group does (gloo on
    CPU too). The statistics are all-reduced with autograd, so the gradient is the single-process
    gradient of the global batch.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _active()):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device, dtype=torch.float64)
        dist.all_reduce(count)
        n = count.item()
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        mean = all_reduce_with_grad(xf.sum(dims)) / n
        var = all_reduce_with_grad(((xf - mean.view(shape)) ** 2).sum(dims)) / n
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
            self.running_var.lerp_(var.detach().to(self.running_var.dtype), m)  # biased, as TF (models/batchnorm)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm (sharing its parameters and statistics) with :class:`GlobalBatchNorm`."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child))
    return module


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """Global BatchNorm and DDP when there are several ranks; the model itself otherwise.

    BatchNorm layers are replaced in place (torch's SyncBatchNorm on CUDA, :class:`GlobalBatchNorm`
    elsewhere), so the unwrapped network keeps the same parameter names for checkpoints.
    """
    if not world.distributed:
        return model
    if device.type == "cuda":
        for name, child in model.named_children():
            model.add_module(name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    else:
        convert_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group together (a rank that exits early can abort the others' gloo threads)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

