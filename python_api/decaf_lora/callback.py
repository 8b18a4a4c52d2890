"""DeCAF in the Hugging Face Trainer: :class:`DecafCallback`, and :func:`agent_training_arguments`, which makes
each process of a ``torchrun`` job train its own agent instead of one data-parallel model.

Why the arguments need a recipe. Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment)
``TrainingArguments`` builds accelerate's ``PartialState`` from that environment: it joins the processes into one
data-parallel job (distributed type MULTI_CPU / MULTI_GPU, world size P). The Trainer then wraps the model in
``DistributedDataParallel``, whose backward all-reduces (averages) every gradient, so all processes train one
model; shards the data loader over the processes; averages the logged loss over them; and saves only on rank 0.
Decentralized training needs the opposite: P independent trainings that meet only in
:meth:`~decaf_lora.peer.DecentralizedLoRA.communicate`. accelerate has no switch for "launched by torchrun but not
data parallel"; what it does support is a state configured beforehand (``AcceleratorConfig(use_configured_state=
True)``: ``TrainingArguments`` and the Trainer's ``Accelerator`` take the existing ``PartialState`` as it is).
:func:`agent_training_arguments` builds that state as one process alone (torchrun's variables hidden from
accelerate while it reads them, and only then) on this process's device, and returns arguments that use it, with an
output folder per agent. The Trainer then sees a world of one: no DDP, no sharding, no cross-process loss average,
and each process saves its own agent. DecentralizedLoRA talks to the peers over torch.distributed's default
process group (it creates it from torchrun's variables, which stay in place, or reuses one that exists).

transformers is imported here at module level (the callback subclasses its ``TrainerCallback``); ``import
decaf_lora`` does not import this module until :class:`DecafCallback` is used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.training_args import ParallelMode

from ._checks import check_int
from .peer import DecentralizedLoRA

__all__ = ["DecafCallback", "agent_training_arguments"]

STATE_FILE = "decaf_peer.json"  # in each Trainer checkpoint folder: the round counter and bytes sent
# the launcher variables accelerate reads to decide it is one of several processes (torchrun's, and MPI's)
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "PMI_RANK", "PMI_SIZE",
                "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_RANK",
                "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")


@contextlib.contextmanager
def _environment(hidden, set_to):
    saved = {k: os.environ.get(k) for k in (*hidden, *set_to)}
    try:
        for k in hidden:
            os.environ.pop(k, None)
        os.environ.update(set_to)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _one_process_state(device: torch.device) -> None:
    """accelerate's shared PartialState as one process alone on ``device``."""
    from accelerate.state import AcceleratorState, DistributedType, PartialState

    if PartialState._shared_state:
        state = PartialState()
        if state.distributed_type == DistributedType.NO and state.device == device:
            return
        AcceleratorState._reset_state(reset_partial_state=True)  # a data-parallel state made earlier
    with _environment(_LAUNCH_VARS, {"ACCELERATE_TORCH_DEVICE": str(device)}):
        PartialState(cpu=device.type == "cpu")


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def agent_training_arguments(output_dir: str, *, device: Any = None, **kwargs) -> TrainingArguments:
    """``TrainingArguments`` for one agent per process: the Trainer of each ``torchrun`` process trains its own
    agent on its own data, without DistributedDataParallel, data sharding or loss averaging across processes.

    Args:
        output_dir: the run's folder; this process writes to ``<output_dir>/agent-<rank>`` (every process is its
            own "main process" for the Trainer and saves its own adapter).
        device: this process's device; default ``cuda:<LOCAL_RANK>`` when CUDA is available (and ``use_cpu`` is not
            set), else the CPU.
        **kwargs: any other ``TrainingArguments`` field. ``disable_tqdm`` defaults to True on ranks > 0;
            ``accelerator_config`` (a dict or ``AcceleratorConfig``) gets ``use_configured_state=True``.

    Example (``torchrun --nproc-per-node 4 train.py``)::

        args = agent_training_arguments("runs/decaf", max_steps=100, per_device_train_batch_size=16)
        dec = DecentralizedLoRA(model, "ring", "decaf")
        Trainer(model=model, args=args, train_dataset=my_slice, callbacks=[DecafCallback(dec, 4)]).train()
    """
    from transformers.trainer_pt_utils import AcceleratorConfig

    rank = int(os.environ.get("RANK", "0"))
    if device is None:
        cuda = torch.cuda.is_available() and not kwargs.get("use_cpu", False)
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cpu":
        kwargs.setdefault("use_cpu", True)
    kwargs.setdefault("disable_tqdm", True if rank > 0 else None)
    config = kwargs.pop("accelerator_config", None)
    if config is None or isinstance(config, dict):
        config = AcceleratorConfig(**(config or {}))
    elif not isinstance(config, AcceleratorConfig):
        raise TypeError(f"accelerator_config must be a dict or an AcceleratorConfig, got {type(config).__name__}")
    config.use_configured_state = True
    _one_process_state(device)
    # transformers warns that an initialised process group without data parallelism is a launch mistake; here it
    # is the intent (the group is DecentralizedLoRA's)
    log = logging.getLogger("transformers.training_args")
    quiet = _DropMessage("parallel_mode != ParallelMode.DISTRIBUTED")
    log.addFilter(quiet)
    try:
        args = TrainingArguments(output_dir=os.path.join(output_dir, f"agent-{rank}"), accelerator_config=config,
                                 **kwargs)
    finally:
        log.removeFilter(quiet)
    if device.type == "cuda" and args.device != device:
        # without data parallelism the Trainer takes cuda:0 and every visible GPU (nn.DataParallel); this
        # process's agent belongs on its own GPU (the cached value of TrainingArguments._setup_devices)
        torch.cuda.set_device(device)
        args.__dict__["_setup_devices"] = device
        args._n_gpu = 1
    _check_one_process(args)
    return args


def _check_one_process(args: TrainingArguments) -> None:
    if args.world_size > 1 or args.parallel_mode == ParallelMode.DISTRIBUTED:
        raise RuntimeError(
            f"this Trainer is set up for data-parallel training over {args.world_size} processes: it would wrap the "
            "model in DistributedDataParallel (which averages every gradient, so all processes would train one "
            "model) and shard the data. Build its arguments with decaf_lora.callback.agent_training_arguments(...), "
            "which makes each process train its own agent")


class DecafCallback(TrainerCallback):
    """Calls :meth:`DecentralizedLoRA.communicate` every ``comm_every`` optimizer steps of a Hugging Face Trainer.

    Args:
        decentralized: the :class:`~decaf_lora.peer.DecentralizedLoRA` of the Trainer's model.
        comm_every: optimizer steps between communications (at ``global_step % comm_every == 0``, after the
            step, before the Trainer logs, evaluates or saves at that step).

    The Trainer must not be data parallel: build its arguments with :func:`agent_training_arguments` (see this
    module's docstring for why); the callback stops it with a clear error otherwise, before training. It attaches
    the Trainer's optimizer to ``decentralized`` (for ``moments="reset"``), adds ``decaf_round``,
    ``decaf_bytes_sent`` (total), ``decaf_round_bytes``, ``decaf_time_exchange`` and ``decaf_interference`` (of
    the last communication) to the Trainer's logs and ``log_history`` (reporting integrations run before user
    callbacks and do not see them), and writes the round counter into each checkpoint folder, so that
    ``trainer.train(resume_from_checkpoint=...)`` continues the graph schedule at the right round.
    """

    def __init__(self, decentralized: DecentralizedLoRA, comm_every: int = 1):
        if not isinstance(decentralized, DecentralizedLoRA):
            raise TypeError(f"decentralized must be a DecentralizedLoRA, got {type(decentralized).__name__}")
        self.decentralized = decentralized
        self.comm_every = check_int("comm_every", comm_every, 1)
        self.last = None  # the last CommRecord

    # ------------------------------------------------------------------------------------------------ set-up
    def on_init_end(self, args, state, control, **kwargs):
        _check_one_process(args)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        _check_one_process(args)
        dec = self.decentralized
        ours = {id(p) for p in dec._factors}
        if model is not None and not any(id(p) in ours for p in model.parameters()):
            raise ValueError("the Trainer's model is not the model this DecentralizedLoRA was built on: pass the "
                             "same model object to both")
        if optimizer is not None:
            inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
            if dec.optimizer is None:
                dec.attach_optimizer(inner)
            elif dec.optimizer is not inner and dec.optimizer is not optimizer:
                raise ValueError("DecentralizedLoRA was given an optimizer the Trainer does not use: leave its "
                                 "optimizer out (the callback attaches the Trainer's) or pass the same one to the "
                                 "Trainer (optimizers=(opt, scheduler))")
        self._resume(args, state)

    def _resume(self, args, state) -> None:
        """Put the round counter where the Trainer's step says it is (and the bytes where the checkpoint says)."""
        dec = self.decentralized
        saved = {"round": state.global_step // self.comm_every, "bytes_sent": 0, "algorithm": dec.algorithm.name}
        path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / STATE_FILE
        if state.global_step > 0 and path.is_file():
            found = json.loads(path.read_text())
            if found["round"] != saved["round"]:
                raise ValueError(f"{path} says round {found['round']} at step {state.global_step}, but comm_every="
                                 f"{self.comm_every} gives round {saved['round']}: resume with the comm_every of "
                                 "the interrupted run")
            saved = found
        elif state.global_step == 0:
            saved["bytes_sent"] = dec.bytes_sent
        dec.load_state_dict(saved)

    # ------------------------------------------------------------------------------------------------ events
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.comm_every == 0:
            self.last = self.decentralized.communicate()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        dec = self.decentralized
        extra = {"decaf_round": dec.round, "decaf_bytes_sent": dec.bytes_sent}
        if self.last is not None:
            extra.update(decaf_round_bytes=self.last.bytes_sent, decaf_time_exchange=self.last.time_exchange)
            if self.last.interference is not None:
                extra["decaf_interference"] = self.last.interference
        logs.update(extra)
        # the Trainer appended this log's record just before calling the callbacks
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if folder.is_dir():
            (folder / STATE_FILE).write_text(json.dumps(self.decentralized.state_dict()))
