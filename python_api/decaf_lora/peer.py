"""DeCAF (or another algorithm of :mod:`decaf_lora.algorithms`) in the user's own training loop: one agent per
process, the user's own peft model and optimizer.

:class:`DecentralizedLoRA` does the communication only: the user trains the model as usual (a plain loop, the
Hugging Face Trainer through :class:`decaf_lora.callback.DecafCallback`, anything) and calls
:meth:`DecentralizedLoRA.communicate` every few optimizer steps. One call exchanges the adapters with the graph
neighbours of the round's mixing matrix, applies the algorithm's rule (DeCAF's consensus, null-direction revival,
the moments policy) and writes the result back into the model's own ``lora_A`` / ``lora_B`` parameters and dense
trainables (the head) in place, so the optimizer, which holds those parameter objects, keeps working.

Everything that must agree between the processes (the algorithm, the mixing matrix, the adapter layers, the wire
dtype, the frozen weights) is compared once, at construction, before anything is exchanged: a mismatch stops every
rank with the same message.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ._checks import check_choice, check_float, check_int
from .adapters import AgentStacks
from .algorithms import Algorithm, make_algorithm
from .exchange import WIRE_DTYPES, Exchange
from .mixing import check_mixing_matrix
from .names import ALGORITHMS, CONSENSUS_METHODS, GRAPHS, MOMENT_POLICIES, SPLITS
from .names import WIRE_DTYPES as WIRE_NAMES
from .processes import DEFAULT_TIMEOUT, Group, Placement, join, launched_by_torchrun
from .topology import Topology

__all__ = ["DecentralizedLoRA", "CommRecord", "frozen_digest"]


@dataclass
class CommRecord:
    """What one :meth:`DecentralizedLoRA.communicate` call did on this process."""

    round: int  # the round's index (0-based): it picks the round's mixing matrix
    communicated: bool  # False for 'local' and for one agent alone (nothing to exchange)
    bytes_sent: int = 0  # bytes this process put on the wire (measured: the packed buffers it sent)
    bytes_diagnostic: int = 0  # of which only to measure the interference (fedavg over several processes)
    time_exchange: float = 0.0  # seconds in the exchange with the peers
    time_consensus: float = 0.0  # seconds in the mixing / consensus maths
    interference: Optional[float] = None  # DLoRA's relative interference under this round's W (mean over layers)

    def as_dict(self) -> dict:
        return asdict(self)


class _FixedMixing:
    """A user-given (N, N) mixing matrix, used at every round (the interface of :class:`Topology` the
    algorithms use: ``n`` and ``matrix(round)``)."""

    def __init__(self, W: Tensor):
        check_mixing_matrix(W)
        self.W = W.detach().to("cpu", torch.float64).clone()
        self.n = int(self.W.shape[0])

    def matrix(self, round_index: int) -> Tensor:
        return self.W.clone()


def _digest(*tensors: Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def frozen_digest(model: nn.Module) -> str:
    """A digest of the frozen parameters (names, shapes, sums): processes whose base model (or, under dlora_fa, A)
    was built differently disagree on it. peft's unused frozen copy of a ``modules_to_save`` module (its
    ``original_module``, e.g. a randomly initialised head) is left out: only the trained copy is used."""
    unused = set()
    for m in model.modules():
        original = getattr(m, "original_module", None)
        if isinstance(original, nn.Module) and hasattr(m, "modules_to_save"):
            unused.update(id(p) for p in original.parameters())
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad and id(p) not in unused:
                h.update(f"{name}{tuple(p.shape)}{float(p.sum(dtype=torch.float64)):.10e}".encode())
    return h.hexdigest()[:16]


def _expected_world(group: Optional[Group]) -> int:
    """How many processes :func:`join` will find, known before it creates a process group."""
    if group is not None:
        return group.world
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def _wire_dtype(value: Any) -> Optional[torch.dtype]:
    allowed = {WIRE_DTYPES[n]: n for n in WIRE_NAMES}
    if value is None or value in allowed:
        return value
    if isinstance(value, str) and value in WIRE_NAMES:
        return WIRE_DTYPES[value]
    raise ValueError(f"wire_dtype must be None, torch.float32, torch.bfloat16 or their names, got {value!r}")


class DecentralizedLoRA:
    """Decentralized LoRA communication for one agent per process, in the user's own training loop.

    Args:
        model: the peft model (LoRA adapters on linear layers; any module holding peft ``LoraLayer`` modules
            does). Its trainable parameters other than LoRA's (e.g. a head in ``modules_to_save``) are averaged
            with the same matrix. Put it on its device before this call.
        topology: a :class:`~decaf_lora.topology.Topology` of N agents, a graph name of
            :data:`~decaf_lora.names.GRAPHS` (built for N = the number of processes, Metropolis weights), or an
            (N, N) doubly stochastic mixing matrix (a tensor, used at every round). N must equal the number of
            processes: agent i is rank i.
        algorithm: one of :data:`~decaf_lora.names.ALGORITHMS`. ``dlora_fa`` needs every ``lora_A`` frozen
            (``requires_grad=False``) at an initialisation shared by all processes: seed the model's construction
            identically (``torch.manual_seed`` before ``get_peft_model``) and freeze A before building the optimizer.
        optimizer: the torch optimizer that steps the model's parameters. Needed with ``moments="reset"`` (its
            state of ``lora_A`` / ``lora_B`` is cleared after each re-factorising round); with ``"procrustes"``
            (default) the factors are rotated so that its moments stay meaningful and it is not touched.
            :class:`~decaf_lora.callback.DecafCallback` attaches the Trainer's.
        adapter: the peft adapter name.
        moments: one of :data:`~decaf_lora.names.MOMENT_POLICIES` (see :func:`decaf_lora.algorithms.align_factors`).
        split: how DeCAF splits the singular values between B and A (:data:`~decaf_lora.names.SPLITS`).
        consensus_method: ``"exact"``, ``"randomized"`` or ``"auto"`` (``decaf_kernels.consensus_tsvd``'s method).
        wire_dtype: None (each tensor's own dtype) or ``torch.bfloat16`` (half the bytes of fp32 adapters).
        timeout: seconds any wait on a peer may take; then :class:`~decaf_lora.processes.PeerError`, never a hang.
            Used when this object joins the process group (``group`` None).
        seed: seed of a graph built from a name (``erdos_renyi``).
        group: the processes (:class:`~decaf_lora.processes.Group`); default :func:`decaf_lora.processes.join`
            on the model's device (torch.distributed's default group under torchrun, gloo for CPU, NCCL for CUDA).

    Raises (before any process group is created or anything exchanged): ValueError / TypeError for an unknown
    algorithm or option, a model without LoRA layers, a trainable ``lora_A`` with ``dlora_fa``, an optimizer that
    does not hold the model's LoRA parameters, or N different from the number of processes; then
    :class:`~decaf_lora.processes.PeerError` on every rank when the processes' settings differ.

    Example (``torchrun --nproc-per-node 4 train.py``)::

        torch.manual_seed(0)                        # the same base model (and A init) on every process
        model = get_peft_model(base_model, LoraConfig(r=8, target_modules=["query", "value"]))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        dec = DecentralizedLoRA(model, "ring", "decaf", opt)
        for step, batch in enumerate(my_batches_for_this_rank):
            model(**batch).loss.backward(); opt.step(); opt.zero_grad()
            if (step + 1) % 4 == 0:
                rec = dec.communicate()             # rec.bytes_sent, rec.time_exchange, rec.interference
    """

    def __init__(self, model: nn.Module, topology: Union[Topology, str, Tensor], algorithm: str = "decaf",
                 optimizer: Optional[torch.optim.Optimizer] = None, *, adapter: str = "default",
                 moments: str = "procrustes", split: str = "balanced", consensus_method: str = "exact",
                 wire_dtype: Any = None, timeout: float = DEFAULT_TIMEOUT, seed: int = 0,
                 group: Optional[Group] = None):
        # 1. the arguments alone
        check_choice("algorithm", algorithm, ALGORITHMS)
        check_choice("moments policy", moments, MOMENT_POLICIES)
        check_choice("split", split, SPLITS)
        check_choice("consensus_method", consensus_method, CONSENSUS_METHODS)
        self.wire_dtype = _wire_dtype(wire_dtype)
        if check_float("timeout", timeout) <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        seed = check_int("seed", seed, 0)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module holding peft LoRA layers, got {type(model).__name__}")
        world = _expected_world(group)
        self.topology = self._topology(topology, world, seed)
        self.n_agents = self.topology.n
        self.algorithm: Algorithm = make_algorithm(algorithm, split=split, consensus_method=consensus_method,
                                                   moments=moments)
        self.moments = moments
        # 2. the model (nothing is changed in it)
        self.model = model
        self.stacks = AgentStacks(model, 1, adapter=adapter)
        self._factors = [p for g in self.stacks.groups for la, lb in g.modules for p in (la.weight, lb.weight)]
        if algorithm == "dlora_fa":
            trainable = [n for g in self.stacks.groups for n, (la, _) in zip(g.names, g.modules)
                         if la.weight.requires_grad]
            if trainable:
                raise ValueError(f"dlora_fa keeps lora_A frozen at an initialisation shared by all agents, but "
                                 f"{len(trainable)} layer(s) have a trainable lora_A (first: {trainable[0]!r}): "
                                 "freeze them (p.requires_grad_(False) for every parameter named '...lora_A...') "
                                 "before building the optimizer, and build the model under the same seed on "
                                 "every process")
        dtypes = {t.dtype for t in self.algorithm.exchanged(self.stacks)}
        if len(dtypes) > 1 and self.wire_dtype is None:
            raise ValueError(f"the adapters and dense trainables have several dtypes {sorted(map(str, dtypes))}; "
                             "pass wire_dtype=torch.float32 (or torch.bfloat16)")
        self.optimizer = None
        if optimizer is not None:
            self.attach_optimizer(optimizer)
        # 3. the processes: one agent each
        if self.n_agents != world:
            if world == 1:
                raise ValueError(
                    f"the topology has {self.n_agents} agents but this process runs alone (not started by "
                    f"torchrun): DecentralizedLoRA hosts one agent per process, so start {self.n_agents} processes "
                    f"(torchrun --nproc-per-node {self.n_agents} your_script.py), or give a topology of 1 agent; "
                    "decaf_lora.Trainer simulates N agents in one process")
            raise ValueError(f"the topology has {self.n_agents} agents but {world} processes were started: "
                             f"DecentralizedLoRA hosts one agent per process; start torchrun --nproc-per-node "
                             f"{self.n_agents}, or give a topology of {world} agents (a graph name builds one)")
        self.group = group if group is not None else join(self.stacks.device, timeout=timeout)
        self.rank = self.group.rank
        self.exchange = Exchange(self.group, Placement(self.n_agents, self.group.world, self.rank),
                                 wire_dtype=self.wire_dtype)
        self.group.check_same(self._settings(algorithm, adapter, split, consensus_method), "DeCAF settings")
        self.round = 0
        self.bytes_sent = 0
        self._round_checked = False  # the first communication checks that every process is at the same round

    # ------------------------------------------------------------------------------------------------ set-up
    @staticmethod
    def _topology(topology, world: int, seed: int):
        if isinstance(topology, Topology):
            return topology
        if isinstance(topology, str):
            check_choice("graph", topology, GRAPHS)
            if world == 1:  # one agent: every graph is the 1 x 1 identity
                return _FixedMixing(torch.ones(1, 1, dtype=torch.float64))
            return Topology.build(topology, world, seed=seed)
        if isinstance(topology, Tensor):
            return _FixedMixing(topology)
        raise TypeError(f"topology must be a decaf_lora Topology, a graph name of {GRAPHS} or an (N, N) mixing "
                        f"matrix tensor, got {type(topology).__name__}")

    def _settings(self, algorithm: str, adapter: str, split: str, consensus_method: str) -> dict:
        """What must be equal on every process (JSON)."""
        topo = self.topology
        if isinstance(topo, Topology):
            graph = {"name": topo.name, "weights": topo.weights, "time_varying": topo.time_varying,
                     "seed": topo.seed, "W": _digest(topo.W), "adjacency": _digest(topo.adjacency.to(torch.uint8))}
        else:
            graph = {"W": _digest(topo.W)}
        return {"algorithm": algorithm, "moments": self.moments, "split": split,
                "consensus_method": consensus_method, "agents": self.n_agents, "topology": graph,
                "wire_dtype": str(self.wire_dtype), "adapter": adapter,
                "lora_layers": [[n, g.d, g.r, g.k, float(s)] for g in self.stacks.groups
                                for n, s in zip(g.names, g.scaling.tolist())],
                "dense": {n: [list(t.shape[1:]), str(t.dtype)] for n, t in self.stacks.dense.items()},
                "dtypes": sorted({str(p.dtype) for p in self._factors}),
                "frozen_weights": frozen_digest(self.model)}

    def attach_optimizer(self, optimizer) -> None:
        """Use ``optimizer`` (it must step the model's LoRA parameters) for the moments policy."""
        state = getattr(optimizer, "param_groups", None)
        if state is None:
            raise TypeError(f"optimizer must be a torch optimizer, got {type(optimizer).__name__}")
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [p for p in self._factors if p.requires_grad and id(p) not in held]
        if missing:
            raise ValueError(f"the optimizer does not hold {len(missing)} trainable LoRA parameter(s) of this model: "
                             "pass the optimizer that steps this model's own parameters")
        self.optimizer = optimizer

    # ------------------------------------------------------------------------------------------------ rounds
    def communicate(self) -> CommRecord:
        """One communication round: exchange with the neighbours under the round's mixing matrix, apply the
        algorithm, write the result into the model (and the moments policy into the optimizer). Every process must
        call it the same number of times.

        Returns:
            a :class:`CommRecord` of this process (bytes sent, seconds in exchange / consensus, interference).

        Raises:
            PeerError: a peer did not answer within the timeout, or the processes are at different rounds.
        """
        reset = self.algorithm.refactorizes and self.moments == "reset" and self.n_agents > 1
        if reset and self.optimizer is None:
            raise ValueError("moments='reset' clears the optimizer's moments of lora_A / lora_B after each "
                             "re-factorising round: pass optimizer= (or attach_optimizer), or use "
                             "moments='procrustes'")
        if not self._round_checked:
            self.group.check_same({"round": self.round}, "communication rounds (resume every process from the same "
                                  "step)")
            self._round_checked = True
        rec = CommRecord(round=self.round, communicated=False)
        W = self.algorithm.mixing(self.topology, self.round) if self.n_agents > 1 else None
        if W is not None:
            self.stacks.store_agent(0)
            traffic = self.algorithm.communicate(self.stacks, W, self.exchange)
            self.stacks.load_agent(0)  # param.copy_: the optimizer's parameter objects stay the same
            if reset:
                for p in self._factors:
                    self.optimizer.state.pop(p, None)
            rec.communicated = True
            rec.bytes_sent = traffic.bytes_wire + traffic.bytes_diagnostic
            rec.bytes_diagnostic = traffic.bytes_diagnostic
            rec.time_exchange, rec.time_consensus = traffic.t_comm, traffic.t_consensus
            if traffic.interference is not None and traffic.interference.numel():
                rec.interference = float(traffic.interference.mean())
        self.round += 1
        self.bytes_sent += rec.bytes_sent
        return rec

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The round counter (it picks the graph schedule's matrix) and the bytes sent so far."""
        return {"round": self.round, "bytes_sent": self.bytes_sent, "algorithm": self.algorithm.name}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a :meth:`state_dict`; the next :meth:`communicate` checks every process is at the same
        round."""
        if state.get("algorithm", self.algorithm.name) != self.algorithm.name:
            raise ValueError(f"the saved state is of algorithm {state['algorithm']!r}, this is "
                             f"{self.algorithm.name!r}")
        self.round = check_int("round", state["round"], 0)
        self.bytes_sent = check_int("bytes_sent", state.get("bytes_sent", 0), 0)
        self._round_checked = False

    def close(self) -> None:
        """Destroy the process group if this object created it (not one it reused)."""
        self.group.close()

    def __repr__(self) -> str:
        return (f"DecentralizedLoRA({self.algorithm.name}, agent {self.rank} of {self.n_agents}, "
                f"round {self.round}, {self.bytes_sent} bytes sent)")
