"""One process, or many under ``torchrun`` (any number of nodes): which rank this is, and the few collectives the
tasks need. ``finetune`` trains with it; ``predict`` and ``validate`` split their images with :func:`shard`."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from .common import resolve_device


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun); known before any process group exists."""
    return int(os.environ.get("RANK", "0"))


class Dist:
    """torchrun's environment, or a single process. Objects (results, file lists) travel through a gloo group
    whatever the backend, so that NCCL ranks can exchange them too."""

    def __init__(self, device: str | None) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.enabled = self.world > 1
        self.objects = None  # the process group objects go through (None: the default one)
        self.owned = False  # whether this object started the process group (and so ends it)
        if self.enabled:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
            self.device = torch.device("cuda", local) if cuda else torch.device("cpu")
            if cuda:
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():  # a program that runs validate() inside its own DDP job keeps its group
                dist.init_process_group("nccl" if cuda else "gloo")
                self.owned = True
            self.rank = dist.get_rank()
            if cuda:
                self.objects = dist.new_group(backend="gloo")
        else:
            self.device, self.rank = resolve_device(device), 0

    @classmethod
    def single(cls, device: str | None = None) -> Dist:
        """One process, whatever the environment says (a model already loaded, as in ``effnet-zoo demo``)."""
        env = cls.__new__(cls)
        env.world, env.enabled, env.objects, env.rank, env.owned = 1, False, None, 0, False
        env.device = resolve_device(device)
        return env

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.objects)
        return box[0]

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value``, in rank order, on rank 0 (None elsewhere)."""
        if not self.enabled:
            return [value]
        out = [None] * self.world if self.main else None
        dist.gather_object(value, out, dst=0, group=self.objects)
        return out

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks, in float64 (counts stay exact up to 2**53)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64)
        dist.all_reduce(t, group=self.objects)
        return t.tolist()

    def check_same_files(self, files: Sequence[str], what: str) -> None:
        """Every rank must see the same files in the same order, or the split would handle some twice and others
        never (nodes without a shared file system, a folder still being copied)."""
        if not self.enabled:
            return
        digest = hashlib.sha256("\n".join(files).encode("utf-8", "surrogateescape")).hexdigest()
        seen = self.broadcast((digest, len(files)))
        if self.sum([seen != (digest, len(files))])[0]:
            raise RuntimeError(
                f"the ranks do not see the same {what} (rank 0: {seen[1]} files, rank {self.rank}: {len(files)}); "
                "every node needs the same folder, at the same path, with the same contents"
            )


def shard(count: int, rank: int, world: int) -> range:
    """The items of ``rank``: every ``world``-th from ``rank``. Nothing is padded or repeated (a
    DistributedSampler repeats images to even the ranks out, counting them twice), and the ranks' n-th batches
    together are one contiguous run of the listing, so rank 0 can write the merged output in listing order."""
    return range(rank, count, world)
