"""``r1kit pipeline PIPELINE.yaml``: the DeepSeek-R1 stages in order, one run directory (see ``rl.pipeline``)."""

from __future__ import annotations

import argparse


def _pipeline(args: argparse.Namespace) -> int:
    from rl.pipeline import run_pipeline

    run_pipeline(
        args.pipeline,
        output_dir=args.output_dir,
        resume=args.resume,
        overwrite=args.overwrite,
        force=args.force,
        progress=not args.no_progress,
    )
    return 0


def add_pipeline_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="run a multi-stage pipeline (cold-start SFT, GRPO, rejection sampling, SFT, GRPO, distillation)",
        description="Run the stages of a pipeline file in order, each starting from the model an earlier stage "
        "made, in one run directory with a subdirectory per stage; writes pipeline_summary.json and ends with a "
        "table of held-out accuracy and format rate after each stage. Example: recipes/r1_tiny_pipeline.yaml.",
    )
    p.add_argument("pipeline", help="pipeline YAML, e.g. recipes/r1_tiny_pipeline.yaml")
    p.add_argument("--output-dir", help="run directory (default: output_dir in the file, else runs/<file stem>)")
    p.add_argument("--resume", action="store_true", help="skip finished stages; resume the interrupted one")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    p.add_argument("--force", action="store_true", help="with --resume: go on although the file changed")
    p.add_argument("--no-progress", action="store_true", help="no live progress bars (log files, CI)")
    p.set_defaults(func=_pipeline)
