"""sas-ray: data-efficient contrastive SSL on Ray, one subcommand per stage.

Every subcommand accepts ``--config FILE`` and any ``--section.key VALUE`` override
(see :mod:`sas_ray.config`); ``sas-ray config`` prints the resolved config. The config is
checked whole (:mod:`sas_ray.validate`) before a stage starts. Stage handlers live next to
the code they drive and are imported lazily, so ``sas-ray info`` does not pay for importing
torch or Ray.

Errors: every exception that reaches :func:`main` is printed as one line (exit 2; Ctrl-C:
130; SIGTERM, raised as an interrupt so that the same clean-up runs: 143); ``-v`` adds the
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import textwrap
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from sas_ray import config as config_mod
from sas_ray import interrupts
from sas_ray.errors import describe
from sas_ray.validate import outlives_job, validate

Arg = tuple[str, dict]


@dataclass(frozen=True)
class Command:
    """A subcommand: its handler ``"module:function"`` (called with the config and the parsed
    arguments), help, arguments, the :mod:`sas_ray.validate` scopes checked before it runs
    and the config it reads (for ``--help``)."""

    handler: str
    help: str
    args: list[Arg] = field(default_factory=list)
    checks: tuple[str, ...] = ("all",)
    reads: str = ""
    notes: Callable[[], str] | None = None  # more help text, built only for --help
    log_file: bool = False  # route output through sas_ray.console (a log file; quiet Ray)


def _strategy_lines() -> str:
    from sas_ray.core.selection.registry import DESCRIPTIONS

    width = max(map(len, DESCRIPTIONS))
    return "strategies (--select.strategies):\n" + "\n".join(
        f"  {name:<{width}}  {text}" for name, text in DESCRIPTIONS.items())


COMMANDS: dict[str, Command] = {
    "ingest": Command(
        "sas_ray.stages.ingest:cli_ingest", "convert an image source into Parquet shards",
        [("source", {"help": "synthetic | ImageFolder dir or .tar(.gz) (local or s3://) | "
                             "idx:DIR | torchvision:NAME[:ROOT] (ROOT default: data)"}),
         ("out", {"help": "output directory or s3:// URI"}),
         ("--force", {"action": "store_true",
                      "help": "rebuild even when OUT holds shards of the same source files "
                              "and settings; replace an artifact of another stage at OUT"})],
        reads="data.*, run.*", log_file=True),
    "info": Command(
        "sas_ray.io.shards:cli_info",
        "summarise a shard dataset: counts per split and class (read from the files' "
        "footers; exit 2 when they differ from the manifest), bytes, shards",
        [("shards", {"help": "dataset directory or s3:// URI"})], checks=()),
    "train": Command(
        "sas_ray.stages.train:cli_train",
        "train SimCLR on shards (optionally a subset) on the run.executor",
        [("--data", {"required": True, "help": "shard dataset"}),
         ("--subset", {"help": "subset or ranking artifact restricting the train ids"}),
         ("--fraction", {"type": float, "help": "cut the --subset ranking at this fraction"}),
         ("--out", {"required": True, "help": "run directory for checkpoints/metrics"})],
        reads="model.*, train.*, eval.* (online kNN), data.image_size, run.*", log_file=True),
    "evaluate": Command(
        "sas_ray.stages.evaluate:cli_evaluate",
        "linear probe + kNN accuracy of a checkpoint on the test split",
        [("--checkpoint", {"required": True,
                           "help": "a sas-ray checkpoint file or run directory"}),
         ("--data", {"required": True, "help": "shard dataset with a test split"}),
         ("--out", {"help": "write eval.json here"})],
        reads="eval.*, run.seed"),
    "embed": Command(
        "sas_ray.stages.embed:cli_embed",
        "embed every image with a proxy encoder (proxy.checkpoint or proxy.encoder)",
        [("--data", {"required": True, "help": "shard dataset"}),
         ("--out", {"required": True, "help": "embeddings directory or s3:// URI"})],
        checks=("all", "embed"),
        reads="proxy.checkpoint (a sas-ray checkpoint file or run directory, or torchvision "
              "ResNet weights) or proxy.encoder + proxy.weights (a pretrained encoder: "
              "torchvision:NAME, timm:NAME, open_clip:ARCH; one of the two is required), "
              "proxy.allow_download, embed.*, run.*", log_file=True),
    "latent": Command(
        "sas_ray.stages.latent:cli_latent",
        "approximate latent classes (labels, few labels + linear, k-means, CLIP zero-shot)",
        [("--embeddings", {"required": True, "help": "embeddings artifact"}),
         ("--out", {"required": True, "help": "partition directory or s3:// URI"})],
        reads="latent.*, proxy.allow_download (clip-zeroshot's tokenizer), run.seed"),
    "select": Command(
        "sas_ray.stages.rank:cli_select",
        "rank examples with each of select.strategies (nested across fractions)",
        [("--embeddings", {"required": True, "help": "embeddings artifact"}),
         ("--partition", {"required": True, "help": "partition artifact (sas-ray latent)"}),
         ("--out", {"required": True,
                    "help": "directory: one ranking per strategy at OUT/<strategy> (a "
                            "non-nested one per sweep.fractions entry at "
                            "OUT/<strategy>/f<fraction>)"}),
         ("--incremental", {"metavar": "PREVIOUS_RANKING",
                            "help": "extend this earlier sas ranking with the new rows "
                                    "(select.incremental; classes the new rows miss are "
                                    "reused byte for byte)"})],
        checks=("all", "select"), reads="select.*, sweep.fractions (non-nested strategies), run.*",
        notes=_strategy_lines, log_file=True),
    "subset-info": Command(
        "sas_ray.stages.rank:cli_subset_info",
        "size, per-class counts and overlap of a subset/ranking",
        [("subset", {"help": "ranking or subset artifact"}),
         ("--fraction", {"type": float, "help": "cut a nested ranking at this fraction"}),
         ("--compare", {"help": "another subset/ranking to measure overlap with"})],
        checks=()),
    "show": Command(
        "sas_ray.stages.show:cli_show",
        "draw a ranking's kept and dropped images of a few latent classes as a PNG",
        [("subset", {"help": "ranking artifact, e.g. outputs/rankings/labels/sas"}),
         ("--fraction", {"type": float,
                         "help": "cut at this fraction (default: the ranking's own, else the "
                                 "smallest of sweep.fractions)"}),
         ("--data", {"help": "the shards it ranks (default: <run.storage>/shards, or /pool "
                             "with data.pool_size)"}),
         ("--out", {"help": "PNG file, local or s3:// (default: <strategy>-f<fraction>.png)"}),
         ("--classes", {"type": int, "default": 3,
                        "help": "latent classes shown, largest to smallest (default 3)"}),
         ("--per-row", {"type": int, "default": 8, "dest": "per_row",
                        "help": "images per kept / dropped row (default 8)"})],
        checks=(), reads="run.storage, data.pool_size, sweep.fractions"),
    "sweep": Command(
        "sas_ray.pipeline:cli_sweep",
        "sweep strategy x latent method x fraction x seed on the run.executor",
        [("--experiment", {"help": "sweep artifact dir (default: <run.storage>/sweep)"})],
        checks=("all", "sweep"), reads="every section but data.source", log_file=True),
    "pipeline": Command(
        "sas_ray.pipeline:cli_pipeline",
        "ingest -> proxy -> embed -> latent -> rank -> sweep -> report",
        checks=("all", "sweep", "pipeline"),
        reads="every section", log_file=True),
    "analyze": Command(
        "sas_ray.analysis.report:cli_analyze",
        "the report page (index.html: table, plots, galleries) of a (possibly partial) sweep",
        [("experiment", {"help": "the sweep artifact (default layout: <run.storage>/sweep)"}),
         ("--out", {"help": "report dir (default: next to it)"})],
        checks=(), reads="analyze.*"),
    "status": Command(
        "sas_ray.pipeline:cli_status", "what is done, running and where outputs are",
        [("storage", {"nargs": "?", "help": "run.storage of the experiment"})], checks=()),
    "config": Command(
        "sas_ray.cli:cli_config",
        "print the resolved config (defaults, then --config, then overrides) as YAML",
        checks=("all", "sweep", "pipeline"), reads="every section"),
}

OVERRIDES = ("Any config key can be overridden as --section.key VALUE (after --config FILE; "
             "lists as a,b or [a, b]), e.g. --train.epochs 5; `sas-ray config` lists every "
             "key with its resolved value.")


def _epilog(*paragraphs: str) -> str:
    return "\n\n".join(textwrap.fill(p, 79) for p in paragraphs if p)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose ``notes`` (a callable) are appended to the help when shown."""

    notes: Callable[[], str] | None = None

    def format_help(self) -> str:
        text = super().format_help()
        return text + "\n" + self.notes() + "\n" if self.notes else text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sas-ray", description=__doc__.splitlines()[0], epilog=_epilog(OVERRIDES),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser,
                                help="a stage, or the whole pipeline (COMMAND --help: its "
                                     "options and the config keys it reads)")
    for name, command in COMMANDS.items():
        reads = f"Config read: {command.reads}." if command.reads else ""
        p = sub.add_parser(name, help=command.help, description=command.help,
                           epilog=_epilog(reads, OVERRIDES),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.notes = command.notes
        p.add_argument("--config", metavar="FILE", help="YAML config file (see configs/)")
        p.add_argument("-v", "--verbose", action="store_true",
                       help="debug logging, and the traceback of an error")
        for flag, kwargs in command.args:
            p.add_argument(flag, **kwargs)
    return parser


def resolve(target: str) -> Callable[..., None]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def cli_config(cfg: config_mod.Config, args: argparse.Namespace) -> None:
    """``sas-ray config [--config FILE] [--section.key VALUE ...]``."""
    print(config_mod.to_yaml(cfg), end="")


def _run(command: Command, cfg: config_mod.Config, args: argparse.Namespace) -> None:
    """The handler; its error's traceback goes to the log file (the terminal gets a line)."""
    try:
        resolve(command.handler)(cfg, args)
    except Exception:
        logging.getLogger(__name__).debug("%s failed", args.command, exc_info=True)
        raise


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
    command = COMMANDS[args.command]
    if not command.log_file:
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    output = getattr(args, "out", None)  # where the command writes, for a full-disk error
    restore_handlers = interrupts.install()
    try:
        cfg = config_mod.load(args.config, config_mod.parse_overrides(rest))
        output = output or cfg.run.storage
        validate(cfg, command.checks)
        if command.checks and getattr(args, "out", None):
            outlives_job("output", args.out)
        if command.log_file:
            from sas_ray.console import console

            with console(args.command, cfg.run.storage, args.verbose):
                _run(command, cfg, args)
        else:
            resolve(command.handler)(cfg, args)
    except KeyboardInterrupt as err:  # Ray, if started, is stopped at exit (executors.ray)
        how = "terminated" if isinstance(err, interrupts.Terminated) else "interrupted"
        print(f"sas-ray {args.command}: {how}", file=sys.stderr)
        return interrupts.exit_code(err)
    except Exception as err:  # every error is one line; -v adds the traceback
        if args.verbose:
            traceback.print_exc()
        print(f"sas-ray {args.command}: error: {describe(err, output)}", file=sys.stderr)
        return 2
    finally:
        restore_handlers()
    return 0


if __name__ == "__main__":
    sys.exit(main())
