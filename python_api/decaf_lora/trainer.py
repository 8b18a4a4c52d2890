"""The reference training loop: N agents, one shared frozen model per process, stacked adapters.

A round is ``comm_every`` local optimizer steps per agent (each on its own data), then one communication step
of the algorithm, then (every ``eval_every`` rounds and at the end) an evaluation on the shared test set:
every agent's accuracy, and the accuracy of the averaged model. Everything a round measured goes to a JSONL log.
A checkpoint (every ``checkpoint_every`` rounds) holds every agent's slot of the stacks, optimizer, data stream
and random stream, so ``resume=True`` continues bit-for-bit where the run stopped (:mod:`decaf_lora.checkpoints`).

The agents may be spread over P processes started by ``torchrun`` (:mod:`decaf_lora.processes`): each process
loads the frozen model once and trains a contiguous block of N/P agents; communication goes through
:mod:`decaf_lora.exchange`; rank 0 writes the log, table, summary and plot. One process alone is P = 1.

Each agent draws its randomness (dropout) from a random stream of its own (seeded by ``seed + 1`` and its index),
that torch's global RNG is swapped to only while that agent trains: where an agent runs does not change its
numbers, evaluation, export and whatever the caller draws in between never change a run, and a run never moves
the caller's global RNG; ``fused=True`` steps a process's agents together and draws their dropout from one stream
per round (:mod:`decaf_lora.fused`). Where the run's files go is :mod:`decaf_lora.runfiles`' business.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Union

import torch

import decaf_kernels

from . import data as D
from ._rng import global_rng, seeded_rng_state, stream_generator
from .adapters import AgentStacks
from .algorithms import RoundTraffic, make_algorithm
from .checkpoints import SHARDS, agent_state, read_agents, remove_unreferenced, restore_agents, write_checkpoint
from .config import TrainConfig
from .exchange import WIRE_DTYPES, Exchange
from .experiment import Experiment
from .exports import is_export, write_export
from .fused import StackedAdamW, StackedAgents, equal_segments, ignore_rows, repeat_batch, stacked_leaves
from .memory import max_over_processes, peak_memory
from .models import build_lora_model, classifier_kind, pick_device
from .peer import frozen_digest
from .processes import Group, Placement, join
from .progress import RoundProgress
from .report import TIMES, eval_record, summarise
from .tasks import add_sums, make_task
from .trackers import Reporters
from .runfiles import (CHECKPOINT, CHECKPOINT_FORMAT, LOG, atomic_write_bytes, atomic_write_folder, check_out_path,
                       check_replaceable, clean_stale_temporaries, mark_run, read_checkpoint)
from .runfiles import check_out_dir as _check_out_dir

# the streams of seed + 1 from this index on draw the agents' A factors (below it: their dropout streams)
A_INIT_STREAM = 500_000

# evaluation runs this many adapters through the model per test batch (memory grows with it)
EVAL_AGENTS_PER_PASS = 16

__all__ = ["Experiment", "RunResult", "Trainer", "compare", "summarise", "check_out_dir", "check_export_path",
           "atomic_write_bytes", "CHECKPOINT_FORMAT"]


def _versions() -> dict:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "decaf_kernels": decaf_kernels.__version__}


def restarted_by_torchrun() -> bool:
    """True in a worker that torchrun restarted after a failure (``--max-restarts``): it resumes."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


@dataclass
class RunResult:
    algorithm: str
    history: List[dict]
    out_dir: Path
    config: TrainConfig
    summary: dict = field(default_factory=dict)


class Trainer:
    """Trains ``config.algorithm`` on an :class:`Experiment`, with this process's block of the agents.

    Args:
        config: the run's :class:`TrainConfig`.
        experiment: shared data and graph (built from ``config`` when None).
        log: where one-line messages go (``print`` by default; only rank 0's are shown).
        group: the processes of the run; by default :func:`decaf_lora.processes.join` (torch.distributed under
            torchrun, else this process alone).
        model: your own peft model (any model with peft LoRA layers, adapter ``"default"``) instead of the one
            ``config`` describes; the same on every process. Its current adapter is every agent's starting point.
        loss: your own training loss, ``loss(model, batch) -> scalar tensor`` (``batch``: ``input_ids``,
            ``attention_mask``, ``labels`` on the device); evaluation still uses the task's metrics.
        collator: builds each batch from per-example features (e.g. ``transformers.DataCollatorWithPadding``);
            by default the batches are padded to their longest row.

    Raises (before data or model are loaded): ValueError for a device that does not exist, a number of agents
    that the number of processes does not divide, or settings that differ between processes; FileExistsError for
    an ``out_dir`` that is a file.
    """

    def __init__(self, config: TrainConfig, experiment: Optional[Experiment] = None, *,
                 log: Callable[[str], None] = print, group: Optional[Group] = None, model=None,
                 loss: Optional[Callable] = None, collator: Optional[Callable] = None):
        self.config = c = config
        self.device = pick_device(c.device)
        self.group = group if group is not None else join(self.device, timeout=c.dist_timeout)
        if self.group.distributed and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.placement = Placement(c.agents, self.group.world, self.group.rank)
        self.main = self.group.rank == 0
        self.log = log if self.main else (lambda msg: None)
        check_out_path(c.out_dir, [c.algorithm])
        if c.fused and loss is not None:
            raise ValueError("fused=True trains the agents in one pass with the task's own loss per agent segment; "
                             "a loss function of yours cannot be split that way: use fused=False with loss=")
        # before anything is loaded: the settings (paths may differ between machines; the data and model they
        # hold are compared below)
        paths = ("model", "data", "test_data", "wordnet_path", "adjacency")
        self.group.check_same({k: v for k, v in c.to_dict().items() if k not in c.NOT_HASHED + paths},
                              "settings")
        self.exp = experiment if experiment is not None else Experiment(config, log=self.log)
        self.out_dir = Path(c.out_dir) / c.algorithm
        self.algorithm = make_algorithm(c.algorithm, split=c.split, consensus_method=c.consensus_method,
                                        moments=c.moments)
        self.task = make_task(c.task, loss, completions=self.exp.lm and self.exp.train.has_prompts)
        if collator is not None and not callable(collator):
            raise TypeError(f"collator must be a callable (list of examples) -> batch, got {type(collator).__name__}")
        self.collator = collator
        if model is None:
            model = build_lora_model(c.model, task=c.task, head=c.head, label_names=self.exp.label_names,
                                     rank=c.rank, lora_alpha=c.lora_alpha, target_modules=c.target_modules,
                                     lora_dropout=c.lora_dropout, use_rslora=c.rslora, seed=c.seed,
                                     pad_token_id=self.exp.tokenizer.pad_token_id)
        elif not hasattr(model, "decaf_kind"):
            model.decaf_kind = classifier_kind(c.model, c.task, c.head)
        self.model = model.to(self.device)
        self.group.check_same({"data": self.exp.fingerprint(), "model": frozen_digest(self.model),
                               "versions": _versions()}, "data, model or library versions")
        self.local = self.placement.local
        self.stacks = AgentStacks(self.model, len(self.local), device=self.device)
        self.stacks.set_train_A(self.algorithm.trains_A)
        if c.a_init == "independent":  # each agent's own A, by its index: the same wherever the agent runs
            for slot, agent in enumerate(self.placement.local):
                self.stacks.draw_A(slot, stream_generator(c.seed + 1, A_INIT_STREAM + agent))
        self.exchange = Exchange(self.group, self.placement,
                                 wire_dtype=WIRE_DTYPES[c.wire_dtype] if c.wire_dtype != "float32" else None)
        self.params = [self.stacks.agent_parameters(i, include_A=self.algorithm.trains_A)
                       for i in range(len(self.local))]
        if c.fused:  # one AdamW over stacked leaves that alias the stacks; self.optimizers: each agent's view
            self._leaves, self._leaf_factors, self._leaf_dense = stacked_leaves(self.stacks, self.algorithm.trains_A)
            self._stacked_opt = StackedAdamW(self._leaves, lr=c.lr, weight_decay=c.weight_decay)
            self.optimizers = self._stacked_opt.agents
        else:
            self.optimizers = [torch.optim.AdamW(p, lr=c.lr, weight_decay=c.weight_decay) for p in self.params]
        self.sampler = D.AgentSampler(self.exp.parts, c.batch_size, seed=c.seed, lengths=self.exp.train_tok.lengths,
                                      length_grouping=c.length_grouping)
        self.history: List[dict] = []
        self.round = 0
        self.bytes_total = 0
        self.bytes_wire_total = 0
        self.wall_time = 0.0
        self._committed_shards: List[str] = []  # the shards the loaded checkpoint names
        # each agent's stream (the model init above used seed); see the module docstring
        self._rng = [self._agent_stream(a) for a in self.local]

    # ------------------------------------------------------------------------------------------------ randomness
    def _agent_stream(self, agent: int) -> dict:
        return seeded_rng_state(stream_generator(self.config.seed + 1, agent).initial_seed(), self.device)

    @contextlib.contextmanager
    def _agent_rng(self, slot: int):
        """Torch's global RNG on agent ``slot``'s stream for the block (dropout draws from the global RNG only)."""
        with global_rng(self._rng[slot], self.device) as state:
            yield
        self._rng[slot] = state()

    def _fused_rng(self):
        """Torch's global RNG, for a round's fused steps, on the stream of the round and this process's first agent
        (one pass draws every agent's dropout at once, so not from the agent's own stream)."""
        seed = stream_generator(self.config.seed + 2, self.round * self.config.agents + self.local[0]).initial_seed()
        return global_rng(seeded_rng_state(seed, self.device), self.device)

    # ------------------------------------------------------------------------------------------------ training
    def _local_steps(self, slot: int) -> List[float]:
        c = self.config
        agent = self.local[slot]
        losses = []
        self.stacks.load_agent(slot)
        for _ in range(c.comm_every):
            batch = self._batch(self.exp.train_tok, self.sampler.next_batch(agent))
            loss = self.task.loss(self.model, batch)
            value = float(loss.detach())  # the step's one host sync: both the check and the log use it
            self._check_loss(agent, value)
            loss.backward()
            self.stacks.gather_grads(self.params[slot], include_A=self.algorithm.trains_A)
            if c.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params[slot], c.max_grad_norm)
            self.optimizers[slot].step()
            self.optimizers[slot].zero_grad(set_to_none=True)
            self.stacks.load_agent(slot)  # the step changed the agent's slot of the stacks
            losses.append(value)
        return losses

    def _fused_local_steps(self) -> List[float]:
        """All of this process's agents' ``comm_every`` local steps, each step one forward/backward over their
        concatenated batches (:class:`StackedAgents` in training mode) and one :class:`StackedAdamW` step."""
        c = self.config
        n = len(self.local)
        losses = []
        with StackedAgents(self.stacks, self._leaf_factors, self._leaf_dense, training=True), self._fused_rng():
            for _ in range(c.comm_every):
                loss = self.task.segment_losses(self.model, self._fused_batch(), n)
                values = loss.detach().tolist()  # the step's one host sync
                for agent, value in zip(self.local, values):
                    self._check_loss(agent, value)
                loss.sum().backward()  # segments are independent: each agent's gradient is its own loss's
                self._stacked_opt.step(c.max_grad_norm)  # each agent clipped to its own norm, then AdamW
                losses.extend(values)
        return losses

    def _fused_batch(self) -> dict:
        """One batch of every local agent (its sampler's next) as equal segments (see :func:`equal_segments`)."""
        idx, filler = equal_segments([self.sampler.next_batch(a) for a in self.local])
        return ignore_rows(self._batch(self.exp.train_tok, idx), filler)

    def _check_loss(self, agent: int, value: float) -> None:
        if not math.isfinite(value):
            c = self.config
            raise FloatingPointError(f"agent {agent}: the training loss is {value} at round {self.round + 1}; "
                                     f"lower lr (now {c.lr}) or lora_alpha (now {c.lora_alpha}), or set "
                                     f"max_grad_norm (now {c.max_grad_norm})")

    def _batch(self, data, idx) -> dict:
        if self.collator is None:
            return data.batch(idx, device=self.device)
        return data.batch(idx, device=self.device, collator=self.collator)

    def _reset_factor_moments(self) -> None:
        n_factor = sum(2 if self.algorithm.trains_A else 1 for _ in self.stacks.groups)
        if self.config.fused:
            self._stacked_opt.reset(self._leaves[:n_factor])
            return
        for opt, params in zip(self.optimizers, self.params):
            for p in params[:n_factor]:
                opt.state.pop(p, None)

    # ------------------------------------------------------------------------------------------------ all agents
    def all_agents(self, *, to_main: bool = False):
        """Every agent's factors per group ``(B (N, L, d, r), A (N, L, r, k))`` and dense parameters ``(N, ...)``,
        on every process (an all_gather when the agents are spread; with ``to_main`` a gather to rank 0, and
        ``(None, None, sent)`` elsewhere), in full precision, and the bytes this process sent for it. Every process
        must call it."""
        tensors = [t for g in self.stacks.groups for t in (g.B, g.A)] + list(self.stacks.dense.values())
        full, sent = self.exchange.gather_all(tensors, "gathering every agent (metrics, evaluation)", native=True,
                                              to_main=to_main)
        if full is None:
            return None, None, sent
        n = 2 * len(self.stacks.groups)
        factors = [(full[2 * i], full[2 * i + 1]) for i in range(len(self.stacks.groups))]
        return factors, dict(zip(self.stacks.dense, full[n:])), sent

    def _scaled(self, factors):
        return [(B.double() * g.scaling.to(B.device).view(1, -1, 1, 1), A.double())
                for g, (B, A) in zip(self.stacks.groups, factors)]

    def consensus_metrics(self, factors=None) -> dict:
        """Consensus distance of the agents' weight updates s*B*A (all layers), absolute and relative to the norm
        of their mean (``factors``: every agent's, from :meth:`all_agents`)."""
        if factors is None:
            factors = self.all_agents()[0]
        sq_dist, sq_mean = 0.0, 0.0
        for sB, A in self._scaled(factors):
            cd = decaf_kernels.consensus_distance(sB, A).double()  # (L,)
            GB = sB.mT @ sB
            GA = A @ A.mT
            mean_sq_norm = (GB * GA).sum((-1, -2)).mean(0)  # (L,): mean_i ||P_i||^2
            sq_dist += float((cd**2).sum())
            sq_mean += float((mean_sq_norm - cd**2).clamp(min=0).sum())  # ||mean_i P_i||^2
        dist = math.sqrt(sq_dist)
        return {"consensus_distance": dist,
                "consensus_distance_rel": dist / math.sqrt(sq_mean) if sq_mean > 0 else None}

    def averaged_adapter(self, everyone=None):
        """Per group the rank-r truncated SVD of the agents' mean product (slot 0 of an all-to-all consensus),
        and the mean of the dense parameters: the model that ``test_acc_avg_model`` evaluates and that
        ``export(agent="average")`` writes. Always the exact truncation (no random sketch, whatever
        ``consensus_method`` training uses), so it neither depends on nor draws from any random stream.
        ``everyone``: the result of :meth:`all_agents` (gathered here when None; every process must call it)."""
        factors, dense, _ = everyone if everyone is not None else self.all_agents()
        N = self.config.agents
        J = torch.full((1, N), 1.0 / N, dtype=torch.float64)
        out = []
        with torch.no_grad():
            for B, A in factors:
                B1, A1 = decaf_kernels.consensus_tsvd(B, A, J, method="exact", split=self.config.split)
                out.append((B1[0], A1[0]))
            mean = {n: t.mean(0) for n, t in dense.items()}
        return out, mean

    @torch.no_grad()
    def _metrics_of(self, factors, dense) -> List[dict]:
        """The task's test metrics (``acc``, ``loss``, and for causal LMs ``perplexity`` and the like) of each of
        the n adapters ``factors`` (per group ``(B (n, L, d, r), A (n, L, r, k))``) and ``dense`` (``(n, ...)``):
        each test batch goes through the model once for all of them (:mod:`decaf_lora.fused`), in passes of at most
        ``EVAL_AGENTS_PER_PASS`` adapters."""
        n = factors[0][0].shape[0]
        sums: List[dict] = [{} for _ in range(n)]
        for lo in range(0, n, EVAL_AGENTS_PER_PASS):
            hi = min(n, lo + EVAL_AGENTS_PER_PASS)
            with StackedAgents(self.stacks, [(B[lo:hi], A[lo:hi]) for B, A in factors],
                               {k: t[lo:hi] for k, t in dense.items()}):
                for idx in self.exp.test_batches:
                    batch = repeat_batch(self._batch(self.exp.test_tok, idx), hi - lo)
                    for i, part in enumerate(self.task.segment_sums(self.model, batch, hi - lo)):
                        add_sums(sums[lo + i], part)
        return [self.task.metrics(s) for s in sums]

    def _evaluate_local(self, everyone) -> dict:
        """This process's agents' test metrics, one list per metric; rank 0 also the averaged model's (``avg``)."""
        self.model.eval()
        factors = [(g.B, g.A) for g in self.stacks.groups]
        dense = dict(self.stacks.dense)
        if self.main:  # the averaged model rides along as one more adapter
            avg_factors, avg_dense = self.averaged_adapter(everyone)
            factors = [(torch.cat([B, Bm.unsqueeze(0).to(B)]), torch.cat([A, Am.unsqueeze(0).to(A)]))
                       for (B, A), (Bm, Am) in zip(factors, avg_factors)]
            dense = {k: torch.cat([t, avg_dense[k].unsqueeze(0).to(t)]) for k, t in dense.items()}
        metrics = self._metrics_of(factors, dense)
        out: dict = {}
        for m in metrics[:len(self.local)]:
            for k, v in m.items():
                out.setdefault(k, []).append(v)
        if self.main:
            out["avg"] = metrics[-1]
        self.model.train()
        return out

    def evaluate(self) -> dict:
        """Test accuracy and loss of every agent, and of the averaged model (every process must call it; the
        values are complete on rank 0)."""
        parts = self.group.all_gather_object(self._evaluate_local(self.all_agents(to_main=True)),
                                             "gathering the evaluation")
        return eval_record(parts)

    # ------------------------------------------------------------------------------------------------ the loop
    def _round(self) -> dict:
        """One round on this process; returns the round's record (complete on rank 0)."""
        c = self.config
        t0 = time.perf_counter()
        self.model.train()
        losses = []
        if c.fused:
            losses = self._fused_local_steps()
        else:
            for slot in range(len(self.local)):
                with self._agent_rng(slot):
                    losses.extend(self._local_steps(slot))
        t1 = time.perf_counter()
        W = self.algorithm.mixing(self.exp.topology, self.round)
        if W is not None and self.group.distributed:
            # the exchange would otherwise time the wait for the slowest process's local steps as communication
            self.group.barrier("waiting for every process's local steps")
        t_wait = time.perf_counter() - t1
        traffic = self.algorithm.communicate(self.stacks, W, self.exchange) if W is not None else RoundTraffic()
        if W is not None and self.algorithm.refactorizes and c.moments == "reset":
            self._reset_factor_moments()
        self.round += 1
        everyone = self.all_agents(to_main=True)
        mine = {"loss": losses, "bytes_wire": traffic.bytes_wire,
                "bytes_diagnostic": traffic.bytes_diagnostic + everyone[2],
                "interference": None if traffic.interference is None else traffic.interference.tolist(),
                "time_local": t1 - t0, "time_wait": t_wait, "time_comm": traffic.t_comm,
                "time_consensus": traffic.t_consensus}
        t2 = time.perf_counter()
        evaluated = self.round % c.eval_every == 0 or self.round == c.rounds
        if evaluated:
            mine["eval"] = self._evaluate_local(everyone)
        mine["time_eval"] = time.perf_counter() - t2
        mine.update(peak_memory(self.device))
        parts = self.group.all_gather_object(mine, "gathering the round's metrics")
        if not self.main:
            return {}
        losses = [x for p in parts for x in p["loss"]]
        interf = [x for p in parts if p["interference"] is not None for x in p["interference"]]
        rec = {"round": self.round, "algorithm": c.algorithm, "train_loss": sum(losses) / len(losses),
               "interference_rel": sum(interf) / len(interf) if interf else None}
        rec.update(self.consensus_metrics(everyone[0]))
        if evaluated:
            rec.update(eval_record([p["eval"] for p in parts]))
        else:
            rec.update({"test_acc_mean": None, "test_acc_min": None, "test_acc_avg_model": None})
        sent = self.algorithm.bytes_sent(self.stacks, W, c.agents)
        wire = sum(p["bytes_wire"] for p in parts)
        self.bytes_total += sent
        self.bytes_wire_total += wire
        rec.update({"bytes": sent, "bytes_total": self.bytes_total, "bytes_wire": wire,
                    "bytes_wire_total": self.bytes_wire_total,
                    "bytes_diagnostic": sum(p["bytes_diagnostic"] for p in parts), "processes": self.group.world})
        rec.update({k: round(max(p[k] for p in parts), 4) for k in TIMES})
        rec.update(max_over_processes(parts))
        return rec

    def run(self, *, resume: bool = False, overwrite: bool = False) -> RunResult:
        """Train for ``config.rounds`` rounds (every process of the run calls it).

        Args:
            resume: continue from ``<out_dir>/<algorithm>/checkpoint.pt`` when it exists (always, in a process that
                torchrun restarted after a failure).
            overwrite: start over even though that folder holds a checkpoint of an earlier run, or write into
                an ``out_dir`` that holds files but no decaf run (without it, both are errors, so that a forgotten
                ``--resume`` or a wrong ``--out-dir`` never destroys anything; see :mod:`decaf_lora.runfiles`).
        """
        c = self.config
        resume = resume or restarted_by_torchrun()
        ckpt_path = self.out_dir / CHECKPOINT
        log_path = self.out_dir / LOG
        if resume and ckpt_path.exists():
            self.load_checkpoint(ckpt_path)
            self.log(f"{c.algorithm}: resumed from {ckpt_path} at round {self.round}")
        else:
            if self.main:
                _check_out_dir(c.out_dir, [c.algorithm], resume=resume, overwrite=overwrite)
            if resume:
                self.log(f"{c.algorithm}: no checkpoint in {self.out_dir}, starting from round 0")
        self.group.barrier("the start of the run")  # no process writes before rank 0 has checked the folder
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            mark_run(Path(c.out_dir))
            stale = clean_stale_temporaries(Path(c.out_dir)) + clean_stale_temporaries(self.out_dir)
            # before the barrier below no process writes shards: those of an uncommitted round can go
            stale += remove_unreferenced(self.out_dir / SHARDS, self._committed_shards, temporaries=True)
            for p in stale:
                self.log(f"{c.algorithm}: removed {p}, left by an interrupted write")
            header = {"event": "start", "algorithm": c.algorithm, "config": c.to_dict(),
                      "experiment": self.exp.describe(), "adapters": self.stacks.describe(),
                      "device": str(self.device), "processes": self.group.world, "versions": _versions()}
            lines = [header] + [dict(event="round", **h) for h in self.history]
            atomic_write_bytes(log_path, lambda p: p.write_text("".join(json.dumps(x) + "\n" for x in lines)))
        self.group.barrier("the start of the run")
        progress = RoundProgress(c, self.round, enabled=self.main, history=self.history)
        reporters = Reporters(c, self.out_dir, history=self.history, enabled=self.main)
        with (open(log_path, "a") if self.main else contextlib.nullcontext()) as log_file, progress, reporters:
            while self.round < c.rounds:
                t0 = time.perf_counter()
                rec = self._round()
                self.wall_time += time.perf_counter() - t0
                if self.main:
                    rec["wall_time"] = round(self.wall_time, 3)
                    self.history.append(rec)
                    log_file.write(json.dumps(dict(event="round", **rec)) + "\n")
                    log_file.flush()
                    reporters.round_done(rec)
                if c.checkpoint_every and (self.round % c.checkpoint_every == 0 or self.round == c.rounds):
                    self.save_checkpoint(ckpt_path)
                if self.main:
                    progress.round_done(rec)
        return RunResult(c.algorithm, self.history, self.out_dir, c, summarise(self.history))

    # ------------------------------------------------------------------------------------------------ state
    def _run_state(self) -> dict:
        return {"algorithm": self.config.algorithm, "config": self.config.to_dict(),
                "run_hash": self.config.run_hash(), "round": self.round, "history": list(self.history),
                "bytes_total": self.bytes_total, "bytes_wire_total": self.bytes_wire_total,
                "wall_time": self.wall_time}

    def _agent_states(self) -> dict:
        sampler = self.sampler.state_dict()
        return {a: agent_state(self.stacks, slot, self.optimizers[slot], sampler, a, self._rng[slot])
                for slot, a in enumerate(self.local)}

    def save_checkpoint(self, path: Union[str, Path]) -> None:
        """Write the full training state atomically (every process calls it; see :mod:`decaf_lora.checkpoints`)."""
        write_checkpoint(Path(path), self._run_state(), self._agent_states(), self.group)

    def load_checkpoint(self, path: Union[str, Path]) -> None:
        """Restore a checkpoint of this run (written by any number of processes). ValueError (nothing changed) if
        it is unreadable, damaged, or belongs to another run."""
        path = Path(path)
        state = read_checkpoint(path)
        if state["algorithm"] != self.config.algorithm:
            raise ValueError(f"checkpoint {path} is of algorithm {state['algorithm']!r}, this run is "
                             f"{self.config.algorithm!r}")
        # the hash tells quickly that nothing changed; when it differs, only values that differ refuse the
        # checkpoint (one written before values were normalised may hash lora_alpha 16 where now it is 16.0)
        diff = self.config.differences(state["config"]) if state["run_hash"] != self.config.run_hash() else {}
        if diff:
            detail = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ValueError(f"checkpoint {path} was written by a run with another configuration ({detail}); "
                             "use another out_dir or the same settings")
        if state["round"] > self.config.rounds:
            raise ValueError(f"checkpoint {path} is at round {state['round']}, beyond rounds={self.config.rounds}")
        agents = read_agents(path, state)
        self._committed_shards = list(state["shards"])
        before = (self._run_state(), self._agent_states())
        try:
            self._restore(state, agents)
        except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as exc:
            self._restore(*before)  # a half-restored trainer must not train on
            raise ValueError(f"checkpoint {path} does not fit this run: {exc}") from exc

    def _restore(self, state: dict, agents: dict) -> None:
        rngs = restore_agents(self.stacks, self.optimizers, self.sampler, agents, self.local)
        self._rng = []
        for slot, rng in enumerate(rngs):
            fresh = self._agent_stream(self.local[slot])
            self._rng.append({"torch": rng["torch"].clone(), **({"cuda": rng.get("cuda", fresh.get("cuda"))}
                                                                  if "cuda" in fresh else {})})
        self.history = list(state["history"])
        self.round = int(state["round"])
        self.bytes_total = int(state["bytes_total"])
        self.bytes_wire_total = int(state.get("bytes_wire_total", 0))
        self.wall_time = float(state["wall_time"])

    # ------------------------------------------------------------------------------------------------ export
    def export(self, path: Union[str, Path], agent: Union[int, str] = "average", *, merged: bool = False) -> Path:
        """Write agent ``agent``'s adapter (or the averaged one), atomically, as a folder that peft, transformers
        and ``decaf predict`` load (see :mod:`decaf_lora.exports`); ``merged``: a whole transformers model with the
        adapter merged in instead. Every process calls it; rank 0 writes.

        An existing ``path`` is replaced only if it is an earlier export (it holds ``decaf_export.json``);
        anything else there raises FileExistsError before anything is written.
        """
        path = Path(path)
        if not (agent == "average" or (isinstance(agent, int) and not isinstance(agent, bool)
                                       and 0 <= agent < self.config.agents)):
            raise ValueError(f"agent must be 'average' or an agent index in [0, {self.config.agents}), got {agent!r}")
        check_export_path(path)
        everyone = self.all_agents()
        if agent == "average":
            self.stacks.load_factors(*self.averaged_adapter(everyone))
        else:
            factors, dense, _ = everyone
            self.stacks.load_factors([(B[agent], A[agent]) for B, A in factors],
                                     {n: t[agent] for n, t in dense.items()})
        c = self.config
        info = {"model": c.model, "task": c.task, "label_names": self.exp.label_names,  # None for a causal LM
                "agent": agent, "algorithm": c.algorithm, "round": self.round, "max_length": c.max_length,
                "text_column": c.text_column, "prompt_column": c.prompt_column,
                "completion_column": c.completion_column}

        if self.main:
            atomic_write_folder(path, lambda tmp: write_export(tmp, self.model, self.exp.tokenizer, info,
                                                               merged=merged), replaceable=is_export)
        self.group.barrier("the export")
        return path


def check_export_path(path: Union[str, Path]) -> None:
    """FileExistsError unless ``path`` is free or an earlier export (which :meth:`Trainer.export` replaces)."""
    check_replaceable(Path(path), is_export)


def check_out_dir(config: TrainConfig, algorithms: List[str], *, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is loaded or trained, to write where that would destroy something: see
    :func:`decaf_lora.runfiles.check_out_dir`."""
    _check_out_dir(config.out_dir, algorithms, resume=resume, overwrite=overwrite)


def compare(config: TrainConfig, algorithms: Optional[List[str]] = None, *, resume: bool = False,
            overwrite: bool = False, experiment: Optional[Experiment] = None,
            log: Callable[[str], None] = print, group: Optional[Group] = None, model=None,
            loss: Optional[Callable] = None, collator: Optional[Callable] = None) -> List[RunResult]:
    """Run several algorithms on the same data, partition, graph, initialisation and seed (``experiment``: data
    and graph prepared already, e.g. from Hugging Face datasets; built from ``config`` when None). Under torchrun
    every process calls it (``group``: see :class:`Trainer`). ``model``, ``loss``, ``collator``: see
    :class:`Trainer`; every algorithm starts from ``model``'s adapter as it was when ``compare`` was called."""
    if config.seeds:
        raise ValueError(f"config.seeds is {config.seeds}: compare runs one seed (config.seed); "
                         "decaf_lora.compare_seeds runs several")
    algorithms = list(algorithms or config.algorithms)
    device = pick_device(config.device)
    group = group if group is not None else join(device, timeout=config.dist_timeout)
    if group.rank == 0 and not restarted_by_torchrun():
        check_out_dir(config, algorithms, resume=resume, overwrite=overwrite)
    quiet = log if group.rank == 0 else (lambda msg: None)
    exp = experiment if experiment is not None else Experiment(config, log=quiet)
    # training writes the agents' adapters into the model: each algorithm starts again from the given one
    start = None if model is None else {n: p.detach().clone() for n, p in model.named_parameters()
                                        if p.requires_grad or "lora_" in n}
    results = []
    for name in algorithms:
        if start is not None:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in start:
                        p.copy_(start[n])
        trainer = Trainer(config.replace(algorithm=name), exp, log=log, group=group, model=model, loss=loss,
                          collator=collator)
        results.append(trainer.run(resume=resume, overwrite=overwrite))
    return results
