"""``r1kit sft RECIPE``: supervised fine-tuning with the recipe's ``sft`` section (``rl.sft``).

``python -m rl.sft_cli RECIPE ...`` runs the same command (the r1kit CLI with ``sft`` registered).
"""

from __future__ import annotations

import argparse
import shutil

from core.configio import ConfigError


def add_sft_commands(sub) -> None:
    """Register ``sft`` on the ``r1kit`` subcommands (``sub``: argparse's subparsers action)."""
    p = sub.add_parser("sft", help="supervised fine-tuning on (prompt, completion) rows (TRL's SFTTrainer)")
    p.add_argument("recipe", help="recipe YAML whose sft section names the rows, e.g. recipes/r1_tiny_pipeline.yaml")
    from rl.cli import add_run_arguments  # rl.cli imports this module: not at the top

    add_run_arguments(p, set_example="sft.dataset=runs/sample/samples.jsonl")
    p.set_defaults(func=_sft)


def _sft(args: argparse.Namespace) -> int:
    from rl.cli import check_resume_recipe, log_to_run_dir
    from rl.config import load_recipe
    from rl.sft import SFTRunner
    from rl.trainer import run_dir_for

    cfg = load_recipe(args.recipe, args.set)
    cfg.sft.check_source()  # before anything touches the run directory
    run_dir = run_dir_for(cfg, args.recipe, args.output_dir)
    if run_dir.joinpath("metrics.jsonl").exists() and not args.resume and not args.overwrite:
        raise ConfigError(
            f"--output-dir: {run_dir} already holds a run; pass --resume to continue it or --overwrite to start over"
        )
    if args.overwrite and not args.resume:
        shutil.rmtree(run_dir, ignore_errors=True)
    if args.resume:
        check_resume_recipe(cfg, run_dir, force=args.force, unread=("algorithm", "sample"))  # sft reads neither
    log_to_run_dir(run_dir)
    SFTRunner(cfg, run_dir, resume=args.resume).train()
    return 0
