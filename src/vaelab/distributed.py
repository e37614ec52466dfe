"""Data-parallel training across the processes torchrun starts (torch.distributed; gloo on CPU, nccl
on CUDA). One process without torchrun is a world of size 1 and takes none of these paths.

Every rank draws the same permutation, binarization and noise from the run's seeded generator and
takes its share of each global batch, so N processes compute what one process computes, up to the
order of float summation. Rank 0 alone writes files and logs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# Seconds a collective waits for the other ranks before it fails (a rank that died or hangs). Long
# enough for rank 0's validation and checkpoint writes, which the others wait for at the next step.
TIMEOUT_ENV = "VAELAB_DDP_TIMEOUT"
DEFAULT_TIMEOUT = 300.0


class DistributedError(RuntimeError):
    """The ranks disagree or lost contact; the message names the rank and what happened."""


@dataclass(frozen=True)
class World:
    """This process's place among the ranks: rank 0 of 1 when not started by torchrun."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch (the first dimension split into `size` near-equal parts)."""
        return batch.tensor_split(self.size)[self.rank] if self.distributed else batch

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `tensor` over all ranks (in place; returned for convenience)."""
        if self.distributed:
            with self.collective("summing epoch statistics"):
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_true(self, flag: bool, device: torch.device) -> bool:
        """Whether `flag` holds on every rank (so that all ranks take the same branch)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1 if flag else 0], device=device)
        with self.collective("checking the loss on every rank"):
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def agree(self, what: str, value) -> None:
        """DistributedError on every rank unless all ranks hold the same JSON-able `value`."""
        if not self.distributed:
            return
        mine = json.dumps(value, sort_keys=True)
        values: list[str | None] = [None] * self.size
        with self.collective(f"comparing the {what}"):
            dist.all_gather_object(values, mine)
        differ = [r for r, v in enumerate(values) if v != values[0]]
        if differ:
            raise DistributedError(f"ranks {', '.join(map(str, differ))} were started with another {what} than "
                                   f"rank 0 ({values[differ[0]]} vs {values[0]}); start every rank with the same "
                                   "command")

    def outcome(self, error: BaseException | None) -> None:
        """Rank 0 tells the others whether its step (e.g. claiming the run directory) worked; on the others
        this raises DistributedError with rank 0's message if it did not."""
        if not self.distributed:
            return
        message = [None if error is None else str(error)]
        with self.collective("waiting for rank 0"):
            dist.broadcast_object_list(message, src=0)
        if not self.main and message[0] is not None:
            raise DistributedError(f"rank 0 failed, so rank {self.rank} stops: {message[0]}")

    @contextmanager
    def collective(self, doing: str) -> Iterator[None]:
        """Turn a failed collective (a rank died, or did not answer within the timeout) into one clear line."""
        try:
            yield
        except DistributedError:
            raise
        except (RuntimeError, dist.DistBackendError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DistributedError(f"rank {self.rank} of {self.size} lost contact with the other ranks while "
                                   f"{doing} ({first}); another rank died or stopped answering within "
                                   f"{timeout_seconds():g} s (${TIMEOUT_ENV})") from None


def timeout_seconds() -> float:
    return float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT)


def started_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: torch.device) -> tuple[World, torch.device]:
    """The world torchrun set up (its process group initialised once) and this rank's device.

    Without torchrun: (World(), device). On CUDA each rank takes the GPU of its LOCAL_RANK."""
    if not started_by_torchrun():
        return World(), device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds()))
    return World(dist.get_rank(), dist.get_world_size()), device


def leave() -> None:
    """Shut the process group down (at the end of a command), if one was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
