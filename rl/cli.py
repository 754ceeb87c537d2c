"""The ``r1kit`` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from rl.configio import ConfigError
from rl.inspect_cli import add_commands as add_inspect_commands


def _train(args: argparse.Namespace) -> int:
    from rl.config import load_recipe
    from rl.trainer import GRPOTrainer, run_dir_for

    cfg = load_recipe(args.recipe, args.set)
    run_dir = run_dir_for(cfg, args.recipe, args.output_dir)
    if run_dir.joinpath("metrics.jsonl").exists() and not args.resume and not args.overwrite:
        raise ConfigError(
            f"--output-dir: {run_dir} already holds a run; pass --resume to continue it or --overwrite to start over"
        )
    if args.overwrite and not args.resume:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
    GRPOTrainer(cfg, run_dir, resume=args.resume).train()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1kit", description="R1-style GRPO post-training for MoE language models")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run a recipe")
    train.add_argument("recipe", help="recipe YAML, e.g. recipes/r1_zero_tiny.yaml")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe key, e.g. --set algorithm.num_generations=16 (repeatable)")  # fmt: skip
    train.add_argument("--output-dir", help="run directory (default: logging.output_dir or runs/<recipe name>)")
    train.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    train.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    train.set_defaults(func=_train)
    add_inspect_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "transformers", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"r1kit: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
