"""Checkpoints of a run whose agents may live in several processes: per-agent state, shards and the manifest.

Everything an agent needs to continue bit-for-bit (its slot of the adapter stacks, its optimizer, its data
stream, its random stream) is saved **per agent**, so a checkpoint can be resumed by any number of processes.

With one process the checkpoint is one file, ``checkpoint.pt``, holding the run's state and every agent's. With P
processes each writes its agents to a shard, ``checkpoint.shards/round-<R>-rank-<p>-of-<P>.pt`` (atomically:
temporary file, fsync, rename); after a barrier, rank 0 writes ``checkpoint.pt``, the **manifest** naming round R's
shards. A round counts as committed only once its manifest is on disk: a process killed while shards are being
written leaves the previous manifest, and the shards it names, intact. Shards of older rounds are removed after
the new manifest is written; shards that no manifest names (a round cut short) are removed on resume.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional

import torch

from .runfiles import CHECKPOINT_FORMAT, atomic_write_bytes, read_checkpoint

__all__ = ["SHARDS", "agent_state", "restore_agents", "write_checkpoint", "read_agents", "remove_unreferenced"]

SHARDS = "checkpoint.shards"
_SHARD = re.compile(r"round-(\d+)-rank-(\d+)-of-(\d+)\.pt")
_SAMPLER_LISTS = ("generator_states", "permutations", "positions", "epochs")


def shard_name(round_index: int, rank: int, world: int) -> str:
    return f"round-{round_index:06d}-rank-{rank}-of-{world}.pt"


def agent_state(stacks, slot: int, optimizer, sampler_state: dict, agent: int, rng: dict) -> dict:
    """Agent ``agent`` (slot ``slot`` of this process's stacks): everything it needs to continue."""
    return {"B": [g.B[slot].clone() for g in stacks.groups], "A": [g.A[slot].clone() for g in stacks.groups],
            "dense": {n: t[slot].clone() for n, t in stacks.dense.items()},
            "optimizer": optimizer.state_dict(),
            "sampler": {k: sampler_state[k][agent] for k in _SAMPLER_LISTS},
            "rng": {k: v.clone() for k, v in rng.items()}}


@torch.no_grad()
def restore_agents(stacks, optimizers, sampler, agents: Dict[int, dict], local: range) -> List[dict]:
    """Put saved per-agent states into this process's slots; returns the agents' RNG states in slot order.

    Raises ValueError, TypeError, KeyError, IndexError or RuntimeError on a state that does not fit (the caller
    rolls back)."""
    missing = [a for a in local if a not in agents]
    if missing:
        raise ValueError(f"it holds no state for agent(s) {missing}")
    sampler_state = sampler.state_dict()
    rngs = []
    for slot, a in enumerate(local):
        st = agents[a]
        if len(st["B"]) != len(stacks.groups) or set(st["dense"]) != set(stacks.dense):
            raise ValueError("the saved adapters do not match this model's LoRA layers / trainable parameters")
        for g, B, A in zip(stacks.groups, st["B"], st["A"]):
            if B.shape != g.B[slot].shape or A.shape != g.A[slot].shape:
                raise ValueError(f"saved factors of shapes {tuple(B.shape)}, {tuple(A.shape)} do not match "
                                 f"{tuple(g.B[slot].shape)}, {tuple(g.A[slot].shape)}")
            g.B[slot].copy_(B)
            g.A[slot].copy_(A)
        for n, t in stacks.dense.items():
            if st["dense"][n].shape != t[slot].shape:
                raise ValueError(f"saved parameter {n!r} has shape {tuple(st['dense'][n].shape)}, "
                                 f"expected {tuple(t[slot].shape)}")
            t[slot].copy_(st["dense"][n])
        optimizers[slot].load_state_dict(st["optimizer"])
        for k in _SAMPLER_LISTS:
            sampler_state[k][a] = st["sampler"][k]
        rngs.append(st["rng"])
    sampler.load_state_dict(sampler_state)
    return rngs


def write_checkpoint(path: Path, run: dict, agents: Dict[int, dict], group) -> None:
    """Write round ``run["round"]``: with one process one file; with several, this process's shard, then (rank 0,
    after every shard is on disk) the manifest. Every process calls it."""
    path = Path(path)
    if not group.distributed:
        state = dict(run, format=CHECKPOINT_FORMAT, world=1, shards=[], agents=agents)
        atomic_write_bytes(path, lambda p: torch.save(state, p))
        return
    folder = path.parent / SHARDS
    folder.mkdir(parents=True, exist_ok=True)
    name = shard_name(run["round"], group.rank, group.world)
    shard = {"format": CHECKPOINT_FORMAT, "run_hash": run["run_hash"], "round": run["round"], "agents": agents}
    atomic_write_bytes(folder / name, lambda p: torch.save(shard, p))
    group.barrier(f"waiting for every checkpoint shard of round {run['round']}")
    if group.rank == 0:
        names = [shard_name(run["round"], p, group.world) for p in range(group.world)]
        state = dict(run, format=CHECKPOINT_FORMAT, world=group.world, shards=names, agents={})
        atomic_write_bytes(path, lambda p: torch.save(state, p))
        remove_unreferenced(folder, keep=names)


def read_agents(path: Path, state: dict) -> Dict[int, dict]:
    """Every agent's state of the manifest ``state`` read from ``path`` (inline, or from its shards)."""
    if not state["shards"]:
        return dict(state["agents"])
    agents: Dict[int, dict] = {}
    folder = Path(path).parent / SHARDS
    for name in state["shards"]:
        shard_path = folder / name
        if not shard_path.is_file():
            raise ValueError(f"checkpoint {path} names shard {shard_path}, which is missing; the run's folder was "
                             "changed by hand. Start over with --overwrite")
        shard = read_checkpoint(shard_path, shard=True)
        if shard["round"] != state["round"] or shard["run_hash"] != state["run_hash"]:
            raise ValueError(f"shard {shard_path} is of round {shard['round']}, its manifest {path} of round "
                             f"{state['round']}: the folder was changed by hand. Start over with --overwrite")
        agents.update(shard["agents"])
    return agents


def remove_unreferenced(folder: Path, keep: Optional[List[str]] = None, *, temporaries: bool = False) -> List[Path]:
    """Remove the shard files in ``folder`` that are not in ``keep`` (older or uncommitted rounds), and with
    ``temporaries`` the temporary files of interrupted shard writes (only while no process writes shards)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    keep = set(keep or [])
    gone = [p for p in folder.iterdir() if (_SHARD.fullmatch(p.name) and p.name not in keep)
            or (temporaries and p.name.startswith(".round-") and p.name.endswith(".tmp"))]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone
