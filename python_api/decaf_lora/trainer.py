"""The reference training loop: N simulated agents, one shared frozen model, stacked adapters.

A round is ``comm_every`` local optimizer steps per agent (each on its own data), then one communication step
of the algorithm, then (every ``eval_every`` rounds and at the end) an evaluation on the shared test set:
every agent's accuracy, and the accuracy of the averaged model. Everything a round measured goes to a JSONL log.
A checkpoint (every ``checkpoint_every`` rounds, written atomically) holds the stacks, every agent's optimizer,
the data samplers and the RNG state, so ``resume=True`` continues bit-for-bit where the run stopped.

Training draws its randomness (dropout; the sketch of a randomized consensus) from a random stream of its own,
seeded by ``seed + 1``, that torch's global RNG is swapped to only while an agent trains or the agents
communicate: evaluation, export and whatever the caller draws in between never change a run, and a run never
moves the caller's global RNG. Where the run's files go is :mod:`decaf_lora.runfiles`' business.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Union

import torch
import torch.nn.functional as F

import decaf_kernels

from . import data as D
from .adapters import AgentStacks
from .algorithms import make_algorithm
from .config import TrainConfig
from .graphs import Topology
from .models import EXPORT_INFO, build_lora_classifier, load_tokenizer, pick_device, write_export_info
from .names import DATA_BUILTIN
from .runfiles import (CHECKPOINT, CHECKPOINT_FORMAT, LOG, atomic_write_bytes, atomic_write_folder, check_out_path,
                       check_replaceable, clean_stale_temporaries, mark_run, read_checkpoint)
from .runfiles import check_out_dir as _check_out_dir

__all__ = ["Experiment", "RunResult", "Trainer", "compare", "summarise", "check_out_dir", "check_export_path",
           "atomic_write_bytes", "CHECKPOINT_FORMAT"]


def _versions() -> dict:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "decaf_kernels": decaf_kernels.__version__}


class Experiment:
    """What every algorithm of a comparison shares: the data, its partition, the tokenizer and the graph.

    The data come from ``config.data`` (the built-in task or a CSV/JSONL file), or from ``train`` and ``test``
    :class:`~decaf_lora.data.TextDataset` objects (e.g. ``decaf_lora.data.from_hf(hf_dataset)``).

    Raises (before any training): FileNotFoundError for missing data or model files, ValueError for a graph that
    is not connected, a partition that leaves an agent without data, and the like.
    """

    def __init__(self, config: TrainConfig, *, train: Optional[D.TextDataset] = None,
                 test: Optional[D.TextDataset] = None, log: Callable[[str], None] = print):
        self.config = c = config
        if (train is None) != (test is None):
            raise ValueError("pass both train and test datasets, or neither (then config.data is read)")
        if train is not None:
            if train.label_names != test.label_names:
                raise ValueError(f"train and test have different label names: {train.label_names[:5]}... vs "
                                 f"{test.label_names[:5]}...")
            self.train, self.test = train, test
            source = f"given datasets: {train.num_classes} classes"
        elif c.data == DATA_BUILTIN:
            full = D.load_wordnet_supersenses(c.wordnet_path)
            self.train, self.test = D.balanced_split(full, c.train_size, c.test_size, seed=c.seed)
            source = f"WordNet noun supersenses ({c.wordnet_path}): {len(full)} synsets, {full.num_classes} classes"
        else:
            full = D.load_text_file(c.data, text_column=c.text_column, label_column=c.label_column)
            if c.test_data:
                self.train = full
                self.test = D.load_text_file(c.test_data, text_column=c.text_column, label_column=c.label_column,
                                             label_names=full.label_names)
            else:
                self.train, self.test = D.train_test_split(full, c.test_fraction, seed=c.seed)
            source = f"{c.data}: {len(full)} examples, {full.num_classes} classes"
        self.label_names = list(self.train.label_names)
        self.topology = Topology.build(c.graph, c.agents, weights=c.weights, time_varying=c.time_varying, p=c.er_p,
                                       seed=c.seed, adjacency_source=c.adjacency)
        self.parts = D.partition(self.train.labels, c.agents, c.partition, alpha=c.dirichlet_alpha,
                                 shards_per_agent=c.shards_per_agent, seed=c.seed)
        self.tokenizer = load_tokenizer(c.model)
        self.train_tok = D.TokenizedDataset(self.train, self.tokenizer, max_length=c.max_length)
        self.test_tok = D.TokenizedDataset(self.test, self.tokenizer, max_length=c.max_length)
        # evaluation batches of similar lengths pad less
        order = torch.argsort(self.test_tok.lengths, stable=True)
        self.test_batches = list(torch.split(order, c.eval_batch_size))
        self.partition_summary = D.partition_summary(self.train.labels, self.parts, self.train.num_classes)
        topo = self.topology.describe()
        sizes = self.partition_summary["sizes"]
        log(f"data: {source}; train {len(self.train)}, test {len(self.test)}; {c.partition} partition over "
            f"{c.agents} agents (sizes {min(sizes)}-{max(sizes)}, classes per agent "
            f"{min(self.partition_summary['classes_per_agent'])}-{max(self.partition_summary['classes_per_agent'])})")
        log(f"graph: {topo['name']} with {topo['edges']} edges, {c.weights} weights, spectral gap "
            f"{topo['spectral_gap']:.4f}" + (f", time-varying {c.time_varying}" if c.time_varying else ""))

    def describe(self) -> dict:
        return {"train_size": len(self.train), "test_size": len(self.test), "label_names": self.label_names,
                "partition": self.partition_summary, "topology": self.topology.describe()}


@dataclass
class RunResult:
    algorithm: str
    history: List[dict]
    out_dir: Path
    config: TrainConfig
    summary: dict = field(default_factory=dict)


class Trainer:
    """Trains ``config.algorithm`` on an :class:`Experiment`.

    Args:
        config: the run's :class:`TrainConfig`.
        experiment: shared data and graph (built from ``config`` when None).
        log: where one-line messages go (``print`` by default).

    Raises (before data or model are loaded): ValueError for a device that does not exist, FileExistsError for
    an ``out_dir`` that is a file.
    """

    def __init__(self, config: TrainConfig, experiment: Optional[Experiment] = None, *,
                 log: Callable[[str], None] = print):
        self.config = c = config
        self.log = log
        self.device = pick_device(c.device)
        check_out_path(c.out_dir, [c.algorithm])
        self.exp = experiment if experiment is not None else Experiment(config, log=log)
        self.out_dir = Path(c.out_dir) / c.algorithm
        self.algorithm = make_algorithm(c.algorithm, split=c.split, consensus_method=c.consensus_method,
                                        moments=c.moments)
        self.model = build_lora_classifier(c.model, len(self.exp.label_names), rank=c.rank, lora_alpha=c.lora_alpha,
                                           target_modules=c.target_modules, lora_dropout=c.lora_dropout,
                                           use_rslora=c.rslora, seed=c.seed).to(self.device)
        self.stacks = AgentStacks(self.model, c.agents, device=self.device)
        self.stacks.set_train_A(self.algorithm.trains_A)
        self.params = [self.stacks.agent_parameters(i, include_A=self.algorithm.trains_A) for i in range(c.agents)]
        self.optimizers = [torch.optim.AdamW(p, lr=c.lr, weight_decay=c.weight_decay) for p in self.params]
        self.sampler = D.AgentSampler(self.exp.parts, c.batch_size, seed=c.seed, lengths=self.exp.train_tok.lengths,
                                      length_grouping=c.length_grouping)
        self.history: List[dict] = []
        self.round = 0
        self.bytes_total = 0
        self.wall_time = 0.0
        # the training stream (the model init above used seed); see the module docstring
        self._rng = {"torch": torch.Generator().manual_seed(c.seed + 1).get_state()}
        if self.device.type == "cuda":
            self._rng["cuda"] = torch.Generator(device=self.device).manual_seed(c.seed + 1).get_state()

    # ------------------------------------------------------------------------------------------------ randomness
    def _global_rng(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def _set_global_rng(self, rng: dict) -> None:
        torch.set_rng_state(rng["torch"])
        if self.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    @contextlib.contextmanager
    def _training_rng(self):
        """Swap torch's global RNG to the training stream for the block (dropout and randomized consensus draw
        from the global RNG only), and back."""
        caller = self._global_rng()
        self._set_global_rng(self._rng)
        try:
            yield
            self._rng = self._global_rng()
        finally:
            self._set_global_rng(caller)

    # ------------------------------------------------------------------------------------------------ training
    def _local_steps(self, i: int) -> List[float]:
        c = self.config
        losses = []
        self.stacks.load_agent(i)
        for _ in range(c.comm_every):
            batch = self.exp.train_tok.batch(self.sampler.next_batch(i), device=self.device)
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            loss = F.cross_entropy(logits.float(), batch["labels"])
            value = float(loss.detach())  # the step's one host sync: both the check and the log use it
            if not math.isfinite(value):
                raise FloatingPointError(f"agent {i}: the training loss is {value} at round {self.round + 1}; "
                                         f"lower lr (now {c.lr}) or lora_alpha (now {c.lora_alpha}), or set "
                                         f"max_grad_norm (now {c.max_grad_norm})")
            loss.backward()
            self.stacks.gather_grads(self.params[i], include_A=self.algorithm.trains_A)
            if c.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params[i], c.max_grad_norm)
            self.optimizers[i].step()
            self.optimizers[i].zero_grad(set_to_none=True)
            self.stacks.load_agent(i)  # the step changed agent i's slot of the stacks
            losses.append(value)
        return losses

    def _reset_factor_moments(self) -> None:
        n_factor = sum(2 if self.algorithm.trains_A else 1 for _ in self.stacks.groups)
        for opt, params in zip(self.optimizers, self.params):
            for p in params[:n_factor]:
                opt.state.pop(p, None)

    # ------------------------------------------------------------------------------------------------ metrics
    def consensus_metrics(self) -> dict:
        """Consensus distance of the agents' weight updates s*B*A (all layers), absolute and relative to the norm
        of their mean."""
        sq_dist, sq_mean = 0.0, 0.0
        for sB, A in self.stacks.scaled():
            cd = decaf_kernels.consensus_distance(sB, A).double()  # (L,)
            GB = sB.mT @ sB
            GA = A @ A.mT
            mean_sq_norm = (GB * GA).sum((-1, -2)).mean(0)  # (L,): mean_i ||P_i||^2
            sq_dist += float((cd**2).sum())
            sq_mean += float((mean_sq_norm - cd**2).clamp(min=0).sum())  # ||mean_i P_i||^2
        dist = math.sqrt(sq_dist)
        return {"consensus_distance": dist,
                "consensus_distance_rel": dist / math.sqrt(sq_mean) if sq_mean > 0 else None}

    def interference(self, W: torch.Tensor) -> float:
        """Mean over agents and layers of DLoRA's relative interference under W on the current factors."""
        vals = [decaf_kernels.interference(sB, A, W.to(sB.device), relative=True).flatten()
                for sB, A in self.stacks.scaled()]
        return float(torch.cat(vals).mean())

    def averaged_adapter(self):
        """Per group the rank-r truncated SVD of the agents' mean product (slot 0 of an all-to-all consensus),
        and the mean of the dense parameters: the model that ``test_acc_avg_model`` evaluates and that
        ``export(agent="average")`` writes. Always the exact truncation (no random sketch, whatever
        ``consensus_method`` training uses), so it neither depends on nor draws from any random stream."""
        J = torch.full((self.config.agents,) * 2, 1.0 / self.config.agents, dtype=torch.float64)
        factors = []
        with torch.no_grad():
            for g in self.stacks.groups:
                B, A = decaf_kernels.consensus_tsvd(g.B, g.A, J, method="exact", split=self.config.split)
                factors.append((B[0], A[0]))
            dense = {n: t.mean(0) for n, t in self.stacks.dense.items()}
        return factors, dense

    @torch.no_grad()
    def _accuracy_of_loaded(self) -> tuple[float, float]:
        correct, loss_sum, total = 0, 0.0, 0
        for idx in self.exp.test_batches:
            batch = self.exp.test_tok.batch(idx, device=self.device)
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).float()
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
            loss_sum += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
            total += len(idx)
        return correct / total, loss_sum / total

    def evaluate(self) -> dict:
        """Test accuracy and loss of every agent, and of the averaged model."""
        self.model.eval()
        accs, losses = [], []
        for i in range(self.config.agents):
            self.stacks.load_agent(i)
            acc, loss = self._accuracy_of_loaded()
            accs.append(acc)
            losses.append(loss)
        self.stacks.load_factors(*self.averaged_adapter())
        acc_avg, _ = self._accuracy_of_loaded()
        self.model.train()
        return {"test_acc_mean": sum(accs) / len(accs), "test_acc_min": min(accs), "test_acc_max": max(accs),
                "test_loss_mean": sum(losses) / len(losses), "test_acc_avg_model": acc_avg, "test_acc": accs}

    # ------------------------------------------------------------------------------------------------ the loop
    def run(self, *, resume: bool = False, overwrite: bool = False) -> RunResult:
        """Train for ``config.rounds`` rounds.

        Args:
            resume: continue from ``<out_dir>/<algorithm>/checkpoint.pt`` when it exists.
            overwrite: start over even though that folder holds a checkpoint of an earlier run, or write into
                an ``out_dir`` that holds files but no decaf run (without it, both are errors, so that a forgotten
                ``--resume`` or a wrong ``--out-dir`` never destroys anything; see :mod:`decaf_lora.runfiles`).
        """
        c = self.config
        ckpt_path = self.out_dir / CHECKPOINT
        log_path = self.out_dir / LOG
        if resume and ckpt_path.exists():
            self.load_checkpoint(ckpt_path)
            self.log(f"{c.algorithm}: resumed from {ckpt_path} at round {self.round}")
        else:
            _check_out_dir(c.out_dir, [c.algorithm], resume=resume, overwrite=overwrite)
            if resume:
                self.log(f"{c.algorithm}: no checkpoint in {self.out_dir}, starting from round 0")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        mark_run(Path(c.out_dir))
        for p in clean_stale_temporaries(Path(c.out_dir)) + clean_stale_temporaries(self.out_dir):
            self.log(f"{c.algorithm}: removed {p}, left by an interrupted write")
        header = {"event": "start", "algorithm": c.algorithm, "config": c.to_dict(), "experiment": self.exp.describe(),
                  "adapters": self.stacks.describe(), "device": str(self.device), "versions": _versions()}
        lines = [header] + [dict(event="round", **h) for h in self.history]
        atomic_write_bytes(log_path, lambda p: p.write_text("".join(json.dumps(x) + "\n" for x in lines)))
        bar = _progress(c, self.round)
        last_eval = next((h for h in reversed(self.history) if h.get("test_acc_mean") is not None), None)
        with open(log_path, "a") as log_file:
            while self.round < c.rounds:
                t0 = time.perf_counter()
                self.model.train()
                losses = []
                with self._training_rng():
                    for i in range(c.agents):
                        losses.extend(self._local_steps(i))
                W = self.algorithm.mixing(self.exp.topology, self.round)
                rec = {"round": self.round + 1, "algorithm": c.algorithm,
                       "train_loss": sum(losses) / len(losses),
                       "interference_rel": self.interference(W) if W is not None else None}
                if W is not None:
                    with self._training_rng():
                        self.algorithm.communicate(self.stacks, W)
                    if self.algorithm.refactorizes and c.moments == "reset":
                        self._reset_factor_moments()
                sent = self.algorithm.bytes_sent(self.stacks, W)
                self.bytes_total += sent
                rec.update(self.consensus_metrics())
                self.round += 1
                if self.round % c.eval_every == 0 or self.round == c.rounds:
                    last_eval = self.evaluate()
                    rec.update(last_eval)
                else:
                    rec.update({"test_acc_mean": None, "test_acc_min": None, "test_acc_avg_model": None})
                self.wall_time += time.perf_counter() - t0
                rec.update({"bytes": sent, "bytes_total": self.bytes_total, "wall_time": round(self.wall_time, 3)})
                self.history.append(rec)
                log_file.write(json.dumps(dict(event="round", **rec)) + "\n")
                log_file.flush()
                if c.checkpoint_every and (self.round % c.checkpoint_every == 0 or self.round == c.rounds):
                    self.save_checkpoint(ckpt_path)
                bar.update(1)
                post = {"loss": f"{rec['train_loss']:.3f}"}
                if last_eval is not None:
                    post["acc"] = f"{last_eval['test_acc_mean']:.3f}"
                if rec["consensus_distance_rel"] is not None:
                    post["cdist"] = f"{rec['consensus_distance_rel']:.2e}"
                bar.set_postfix(post, refresh=False)
        bar.close()
        return RunResult(c.algorithm, self.history, self.out_dir, c, summarise(self.history))

    # ------------------------------------------------------------------------------------------------ state
    def checkpoint_state(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "algorithm": self.config.algorithm, "config": self.config.to_dict(),
                "run_hash": self.config.run_hash(), "round": self.round, "stacks": self.stacks.state_dict(),
                "optimizers": [o.state_dict() for o in self.optimizers],
                "sampler": self.sampler.state_dict(), "rng": {k: v.clone() for k, v in self._rng.items()},
                "history": list(self.history), "bytes_total": self.bytes_total, "wall_time": self.wall_time}

    def save_checkpoint(self, path: Union[str, Path]) -> None:
        """Write the full training state atomically (temporary file, fsync, rename)."""
        state = self.checkpoint_state()
        atomic_write_bytes(Path(path), lambda p: torch.save(state, p))

    def load_checkpoint(self, path: Union[str, Path]) -> None:
        """Restore a checkpoint of this run. ValueError (nothing changed) if it is unreadable, damaged, or
        belongs to another run."""
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
        if len(state["optimizers"]) != self.config.agents:
            raise ValueError(f"checkpoint {path} has {len(state['optimizers'])} optimizers, this run has "
                             f"{self.config.agents} agents")
        before = self.checkpoint_state()
        try:
            self._restore(state)
        except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as exc:
            self._restore(before)  # a half-restored trainer must not train on
            raise ValueError(f"checkpoint {path} does not fit this run: {exc}") from exc

    def _restore(self, state: dict) -> None:
        self.stacks.load_state_dict(state["stacks"])
        for opt, sd in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(sd)
        self.sampler.load_state_dict(state["sampler"])
        rng = {"torch": state["rng"]["torch"].clone()}
        if self.device.type == "cuda":
            rng["cuda"] = state["rng"].get("cuda", self._rng.get("cuda"))
        self._rng = rng
        self.history = list(state["history"])
        self.round = int(state["round"])
        self.bytes_total = int(state["bytes_total"])
        self.wall_time = float(state["wall_time"])

    # ------------------------------------------------------------------------------------------------ export
    def export(self, path: Union[str, Path], agent: Union[int, str] = "average") -> Path:
        """Write agent ``agent``'s adapter (or the averaged one) with peft's ``save_pretrained``, atomically.

        Load it back with :func:`decaf_lora.load_exported` or ``peft.PeftModel.from_pretrained`` on an
        :class:`~decaf_lora.models.EncoderClassifier` of the same base model.

        An existing ``path`` is replaced only if it is an earlier export (it holds ``decaf_export.json``);
        anything else there raises FileExistsError before anything is written.
        """
        path = Path(path)
        if not (agent == "average" or (isinstance(agent, int) and not isinstance(agent, bool)
                                       and 0 <= agent < self.config.agents)):
            raise ValueError(f"agent must be 'average' or an agent index in [0, {self.config.agents}), got {agent!r}")
        check_export_path(path)
        if agent == "average":
            self.stacks.load_factors(*self.averaged_adapter())
        else:
            self.stacks.load_agent(agent)

        def fill(tmp: Path) -> None:
            self.model.save_pretrained(str(tmp))
            write_export_info(tmp, {"model": self.config.model, "label_names": self.exp.label_names,
                                    "agent": agent, "algorithm": self.config.algorithm, "round": self.round,
                                    "max_length": self.config.max_length})

        atomic_write_folder(path, fill, replaceable=_is_export)
        return path


def _is_export(path: Path) -> bool:
    return (Path(path) / EXPORT_INFO).is_file()


def check_export_path(path: Union[str, Path]) -> None:
    """FileExistsError unless ``path`` is free or an earlier export (which :meth:`Trainer.export` replaces)."""
    check_replaceable(Path(path), _is_export)


def _progress(config: TrainConfig, start: int):
    from tqdm.auto import tqdm

    return tqdm(total=config.rounds, initial=start, desc=f"{config.algorithm:<9}", unit="round",
                disable=not config.progress, dynamic_ncols=True, leave=True)


def summarise(history: List[dict]) -> dict:
    """The final row of a run: its last evaluated metrics, last consensus distance, bytes and time."""
    if not history:
        return {}
    last = history[-1]
    ev = next((h for h in reversed(history) if h.get("test_acc_mean") is not None), {})
    return {"rounds": last["round"], "train_loss": last["train_loss"],
            "test_acc_mean": ev.get("test_acc_mean"), "test_acc_min": ev.get("test_acc_min"),
            "test_acc_avg_model": ev.get("test_acc_avg_model"),
            "consensus_distance": last["consensus_distance"], "consensus_distance_rel": last["consensus_distance_rel"],
            "interference_rel": last["interference_rel"], "bytes_total": last["bytes_total"],
            "wall_time": last["wall_time"]}


def check_out_dir(config: TrainConfig, algorithms: List[str], *, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is loaded or trained, to write where that would destroy something: see
    :func:`decaf_lora.runfiles.check_out_dir`."""
    _check_out_dir(config.out_dir, algorithms, resume=resume, overwrite=overwrite)


def compare(config: TrainConfig, algorithms: Optional[List[str]] = None, *, resume: bool = False,
            overwrite: bool = False, experiment: Optional[Experiment] = None,
            log: Callable[[str], None] = print) -> List[RunResult]:
    """Run several algorithms on the same data, partition, graph, initialisation and seed (``experiment``: data
    and graph prepared already, e.g. from Hugging Face datasets; built from ``config`` when None)."""
    algorithms = list(algorithms or config.algorithms)
    pick_device(config.device)
    check_out_dir(config, algorithms, resume=resume, overwrite=overwrite)
    exp = experiment if experiment is not None else Experiment(config, log=log)
    results = []
    for name in algorithms:
        trainer = Trainer(config.replace(algorithm=name), exp, log=log)
        results.append(trainer.run(resume=resume, overwrite=overwrite))
    return results
