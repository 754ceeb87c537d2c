"""``r1kit sft RECIPE``: supervised fine-tuning with the recipe's ``sft`` section (``rl.sft``)."""

from __future__ import annotations

import argparse


def add_sft_commands(sub) -> None:
    """Register ``sft`` on the ``r1kit`` subcommands (``sub``: argparse's subparsers action)."""
    p = sub.add_parser("sft", help="supervised fine-tuning on (prompt, completion) rows (TRL's SFTTrainer)")
    p.add_argument("recipe", help="recipe YAML whose sft section names the rows, e.g. recipes/r1_tiny_pipeline.yaml")
    from rl.cli import add_run_arguments  # rl.cli imports this module: not at the top

    add_run_arguments(p, set_example="sft.dataset=runs/sample/samples.jsonl")
    p.set_defaults(func=_sft)


def _sft(args: argparse.Namespace) -> int:
    from rl.cli import prepare_run_dir
    from rl.config import load_recipe
    from rl.sft import SFTRunner
    from rl.trainer import run_dir_for

    cfg = load_recipe(args.recipe, args.set)
    cfg.sft.check_source()  # before anything touches the run directory
    run_dir = run_dir_for(cfg, args.recipe, args.output_dir)
    prepare_run_dir(cfg, run_dir, args, unread=("algorithm", "sample"))  # sft reads neither
    SFTRunner(cfg, run_dir, resume=args.resume).train()
    return 0
