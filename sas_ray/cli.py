"""sas-ray: data-efficient contrastive SSL on Ray, one subcommand per stage.

Every subcommand accepts ``--config FILE`` and any ``--section.key VALUE`` override
(see :mod:`sas_ray.config`). Stage handlers live next to the code they drive and are
imported lazily, so ``sas-ray info`` does not pay for importing torch or Ray.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

from sas_ray import config as config_mod
from sas_ray.errors import SasRayError

# subcommand -> (handler "module:function", help, [(flag or positional, kwargs), ...])
Arg = tuple[str, dict]
COMMANDS: dict[str, tuple[str, str, list[Arg]]] = {
    "ingest": ("sas_ray.stages.ingest:cli_ingest",
               "convert an image source into Parquet shards",
               [("source", {"help": "synthetic | ImageFolder dir or .tar(.gz) (local or s3://) | "
                                    "idx:DIR | torchvision:NAME[:ROOT] (ROOT default: data)"}),
                ("out", {"help": "output directory or s3:// URI"}),
                ("--force", {"action": "store_true",
                             "help": "rebuild even when OUT holds shards of the same source "
                                     "files and settings"})]),
    "info": ("sas_ray.io.shards:cli_info",
             "summarise a shard dataset: counts per split and class, bytes, shards",
             [("shards", {"help": "dataset directory or s3:// URI"})]),
    "train": ("sas_ray.executors.ray.train:cli_train",
              "train SimCLR on shards (optionally a subset) with Ray Train",
              [("--data", {"required": True, "help": "shard dataset"}),
               ("--subset", {"help": "subset or ranking artifact restricting the train ids"}),
               ("--fraction", {"type": float, "help": "cut a ranking at this fraction"}),
               ("--out", {"required": True, "help": "run directory for checkpoints/metrics"})]),
    "evaluate": ("sas_ray.stages.evaluate:cli_evaluate",
                 "linear probe + kNN accuracy of a checkpoint on the test split",
                 [("--checkpoint", {"required": True}), ("--data", {"required": True}),
                  ("--out", {"help": "write eval.json here"})]),
    "embed": ("sas_ray.stages.embed:cli_embed",
              "embed every image with a proxy encoder on Ray Data actors",
              [("--data", {"required": True, "help": "shard dataset"}),
               ("--proxy", {"required": True, "help": "encoder: a sas-ray checkpoint (file or "
                                                      "dir) or torchvision ResNet weights"}),
               ("--out", {"required": True, "help": "embeddings directory or s3:// URI"})]),
    "latent": ("sas_ray.stages.latent:cli_latent",
               "approximate latent classes (labels, few labels + linear, k-means)",
               [("--embeddings", {"required": True}), ("--out", {"required": True})]),
    "select": ("sas_ray.stages.rank:cli_select",
               "rank examples with a selection strategy (nested across fractions)",
               [("--embeddings", {"required": True}), ("--partition", {"required": True}),
                ("--strategy", {"required": True}), ("--fraction", {"type": float,
                 "help": "for strategies that are not nested"}),
                ("--out", {"required": True})]),
    "subset-info": ("sas_ray.stages.rank:cli_subset_info",
                    "size, per-class counts and overlap of a subset/ranking",
                    [("subset", {}), ("--fraction", {"type": float}),
                     ("--compare", {"help": "another subset/ranking to measure overlap with"})]),
    "sweep": ("sas_ray.stages.sweep:cli_sweep",
              "Ray Tune sweep over strategy x fraction x seed",
              [("--experiment", {"help": "experiment dir (default: <run.storage>/sweep)"})]),
    "pipeline": ("sas_ray.pipeline:cli_pipeline",
                 "ingest -> proxy -> embed -> latent -> rank -> sweep -> report", []),
    "analyze": ("sas_ray.analysis.report:cli_analyze",
                "tables and plot from a (possibly partial) sweep",
                [("experiment", {}), ("--out", {"help": "report dir (default: next to it)"})]),
    "status": ("sas_ray.pipeline:cli_status",
               "what is done, running and where outputs are",
               [("storage", {"nargs": "?", "help": "run.storage of the experiment"})]),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sas-ray", description=__doc__.splitlines()[0],
        epilog="Config overrides: --section.key VALUE (e.g. --train.epochs 5).")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_, args) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", help="YAML config file")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        for flag, kwargs in args:
            p.add_argument(flag, **kwargs)
    return parser


def resolve(target: str) -> Callable[..., None]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.version:
        from sas_ray import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = config_mod.load(args.config, config_mod.parse_overrides(rest))
        resolve(COMMANDS[args.command][0])(cfg, args)
    except SasRayError as err:
        print(f"sas-ray {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sas-ray {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
