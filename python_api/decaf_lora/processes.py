"""The processes of a run: who hosts which agents, and the torch.distributed group they talk through.

N agents are spread over P processes in contiguous blocks (P divides N): process p hosts agents
``p * N/P ... (p + 1) * N/P - 1``. One process alone (P = 1) needs no process group at all; under ``torchrun``
(``RANK``, ``WORLD_SIZE`` and ``MASTER_ADDR`` in the environment) :func:`join` starts one, gloo for CPU tensors
and NCCL for CUDA tensors, with a timeout that bounds every wait on a peer.

Everything that could differ between ranks and must not (the run's settings, the model, N) is compared once,
before training, by :meth:`Group.check_same`: a mismatch stops every rank with the same message.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ._checks import PeerError

__all__ = ["Placement", "Group", "join", "launched_by_torchrun", "PeerError", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 300.0  # seconds; a peer silent for this long is taken for dead (gloo's own default is 30 min)


def launched_by_torchrun() -> bool:
    """True when this process was started by ``torchrun`` (or anything that sets its environment) with more
    than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


@dataclass(frozen=True)
class Placement:
    """Which agents a process hosts: a contiguous block of ``n_agents / world`` agents."""

    n_agents: int
    world: int
    rank: int

    def __post_init__(self):
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not in [0, {self.world})")
        if self.n_agents < self.world or self.n_agents % self.world:
            raise ValueError(f"{self.n_agents} agents cannot be spread over {self.world} processes in equal blocks: "
                             f"the number of processes must divide the number of agents (e.g. --nproc-per-node "
                             f"{_divisors_hint(self.n_agents)})")

    @property
    def per_process(self) -> int:
        return self.n_agents // self.world

    @property
    def first(self) -> int:
        return self.rank * self.per_process

    @property
    def local(self) -> range:
        """The global indices of this process's agents."""
        return range(self.first, self.first + self.per_process)

    def owner(self, agent: int) -> int:
        return agent // self.per_process

    def block(self, rank: int) -> range:
        return range(rank * self.per_process, (rank + 1) * self.per_process)


def _divisors_hint(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


class Group:
    """P processes (or one) with the few collective operations a run needs, each bounded by ``timeout``.

    ``Group()`` is one process alone: every operation is local and free. :func:`join` makes the torch.distributed
    one. ``device`` is where buffers travel: the CPU for gloo, the process's GPU for NCCL.
    """

    def __init__(self, *, rank: int = 0, world: int = 1, timeout: float = DEFAULT_TIMEOUT,
                 device: torch.device = torch.device("cpu"), process_group: Any = None, owns_group: bool = False):
        self.rank, self.world = rank, world
        self.timeout = float(timeout)
        self.device = torch.device(device)
        self.pg = process_group
        self._owns = owns_group

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def wait_timeout(self) -> datetime.timedelta:
        return datetime.timedelta(seconds=self.timeout)

    def wait(self, works, what: str, peers=None) -> None:
        """Wait for ``works`` (torch.distributed Work objects), at most ``timeout`` seconds; PeerError otherwise."""
        try:
            for w in works:
                w.wait(self.wait_timeout)
        except RuntimeError as exc:
            who = f"process(es) {sorted(peers)}" if peers else "a peer process"
            raise PeerError(f"rank {self.rank}: {what} with {who} failed or timed out after {self.timeout:g} s: a peer "
                            f"died, hangs, or left the run ({str(exc).splitlines()[0][:200]}). Every process stops "
                            "here; restart from the last checkpoint (decaf train: torchrun --max-restarts K, or "
                            "--resume)") from exc

    # ---------------------------------------------------------------------------------------------- collectives
    def barrier(self, what: str = "barrier") -> None:
        if self.distributed:
            import torch.distributed as dist

            # a barrier is an all_reduce of one element: its work object takes our timeout, unlike dist.barrier
            self.wait([dist.all_reduce(torch.zeros(1, device=self.device), group=self.pg, async_op=True)], what)

    def all_gather(self, t: torch.Tensor, what: str) -> torch.Tensor:
        """(P, *t.shape): every process's ``t`` (equal shapes), in rank order."""
        if not self.distributed:
            return t.unsqueeze(0)
        import torch.distributed as dist

        src = t.to(self.device).contiguous()
        out = [torch.empty_like(src) for _ in range(self.world)]
        self.wait([dist.all_gather(out, src, group=self.pg, async_op=True)], what)
        return torch.stack(out).to(t.device)

    def gather(self, t: torch.Tensor, what: str) -> Optional[torch.Tensor]:
        """(P, *t.shape) on rank 0 (every process's ``t``, equal shapes, in rank order); None elsewhere."""
        if not self.distributed:
            return t.unsqueeze(0)
        import torch.distributed as dist

        src = t.to(self.device).contiguous()
        out = [torch.empty_like(src) for _ in range(self.world)] if self.rank == 0 else None
        self.wait([dist.gather(src, out, dst=0, group=self.pg, async_op=True)], what)
        return torch.stack(out).to(t.device) if out is not None else None

    def all_reduce_sum(self, t: torch.Tensor, what: str) -> torch.Tensor:
        if not self.distributed:
            return t.clone()
        import torch.distributed as dist

        buf = t.to(self.device).contiguous().clone()
        self.wait([dist.all_reduce(buf, group=self.pg, async_op=True)], what)
        return buf.to(t.device)

    def all_gather_object(self, obj: Any, what: str) -> list:
        """Every process's JSON-serialisable ``obj`` (through a byte tensor, so the timeout applies)."""
        if not self.distributed:
            return [obj]
        data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)
        sizes = self.all_gather(torch.tensor([data.numel()], dtype=torch.int64), what)
        width = int(sizes.max())
        padded = torch.zeros(width, dtype=torch.uint8)
        padded[: data.numel()] = data
        rows = self.all_gather(padded, what)
        return [json.loads(bytes(rows[p, : int(sizes[p, 0])].tolist()).decode()) for p in range(self.world)]

    def check_same(self, settings: dict, what: str = "settings") -> None:
        """Stop every rank, with the same message, unless every rank passes equal ``settings`` (a JSON dict)."""
        if not self.distributed:
            return
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
        digests = self.all_gather_object(digest, f"comparing {what}")
        if len(set(digests)) == 1:
            return
        everyone = self.all_gather_object(settings, f"comparing {what}")
        keys = sorted({k for s in everyone for k in s})
        differ = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True, default=str) for s in everyone}) > 1]
        detail = "; ".join(f"{k}: " + ", ".join(f"rank {p} {everyone[p].get(k)!r}" for p in range(self.world))
                           for k in differ[:6])
        raise PeerError(f"the processes of this run were started with different {what} ({detail}); start every "
                        "process with the same command, config file, model and data")

    def close(self) -> None:
        if self._owns:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._owns = False


def join(device: torch.device | str = "cpu", *, timeout: float = DEFAULT_TIMEOUT,
         backend: Optional[str] = None) -> Group:
    """The group of this process: under torchrun, join (or reuse) torch.distributed's default process group;
    otherwise one process alone.

    Args:
        device: where the agents' tensors live. CUDA picks NCCL and this process's GPU (``LOCAL_RANK``); the CPU
            picks gloo.
        timeout: seconds any wait on a peer may take before the run stops with :class:`PeerError`.
        backend: force ``"gloo"`` or ``"nccl"``.
    """
    import torch.distributed as dist

    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    device = torch.device(device)
    if dist.is_available() and dist.is_initialized():
        backend = dist.get_backend()
        comm_dev = device if backend == "nccl" else torch.device("cpu")
        return Group(rank=dist.get_rank(), world=dist.get_world_size(), timeout=timeout, device=comm_dev)
    if not launched_by_torchrun():
        return Group(timeout=timeout)
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; it cannot run under torchrun")
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    comm_dev = torch.device("cpu")
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device.index is None:
            device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        comm_dev = device
    # torchrun keeps one store across restarts (--max-restarts): without a prefix per attempt, a restarted worker
    # can read a dead predecessor's gloo address from it and fail to connect
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    wait = datetime.timedelta(seconds=timeout)
    store, rank, world = next(dist.rendezvous("env://", timeout=wait))
    dist.init_process_group(backend, store=dist.PrefixStore(f"decaf_lora/attempt-{attempt}", store), rank=rank,
                            world_size=world, timeout=wait)
    return Group(rank=dist.get_rank(), world=dist.get_world_size(), timeout=timeout, device=comm_dev,
                 owns_group=True)
