"""The ``r1kit`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from core.configio import ConfigError
from rl.eval_cli import add_eval_commands
from rl.inspect_cli import add_commands as add_inspect_commands
from rl.pipeline_cli import add_pipeline_commands
from rl.sample_cli import add_sample_commands
from rl.sft_cli import add_sft_commands
from rl.tools_cli import add_commands as add_tool_commands
from rl.tools_cli import package_version

log = logging.getLogger("r1kit")


def _train(args: argparse.Namespace) -> int:
    from rl.config import load_recipe
    from rl.trainer import GRPOTrainer, run_dir_for

    cfg = load_recipe(args.recipe, args.set)
    run_dir = prepare_run_dir(cfg, run_dir_for(cfg, args.recipe, args.output_dir), args, unread=("sft", "sample"))
    GRPOTrainer(cfg, run_dir, resume=args.resume).train()
    return 0


def prepare_run_dir(cfg, run_dir: Path, args: argparse.Namespace, *, unread: tuple[str, ...]) -> Path:
    """What ``train`` and ``sft`` do to the run directory before a run: refuse to write over a run without
    ``--resume`` / ``--overwrite``, delete it for ``--overwrite``, check the recipe against it for ``--resume``
    (``unread``: sections the command ignores), and copy the log into it."""
    if run_dir.joinpath("metrics.jsonl").exists() and not args.resume and not args.overwrite:
        raise ConfigError(
            f"--output-dir: {run_dir} already holds a run; pass --resume to continue it or --overwrite to start over"
        )
    if args.overwrite and not args.resume:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
    if args.resume:
        check_resume_recipe(cfg, run_dir, force=args.force, unread=unread)
    log_to_run_dir(run_dir)
    return run_dir


# Keys a resume may change without --force: they decide how long the run goes on and what it reports, not what
# it computes (max_steps also sets the LR schedule's length: a changed schedule is the point of extending a run).
RESUME_MAY_CHANGE = (
    "training.max_steps",
    "logging.progress",
    "logging.plots",
    "logging.output_dir",
    "logging.trackers",
    "logging.project",
    "logging.run_name",
)


def check_resume_recipe(cfg, run_dir: Path, *, force: bool, unread: tuple[str, ...] = ()) -> None:
    """Refuse to resume with a recipe that differs from the run's ``config.yaml`` (e.g. another batch size would
    fail deep inside the optimizer state), naming the keys that differ. ``unread``: sections the command does not
    read (``r1kit train`` ignores ``sft`` and ``sample``; a run written before they existed lacks them)."""
    import yaml

    from rl.config import dump_recipe, recipe_changes

    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    changes = recipe_changes(saved, yaml.safe_load(dump_recipe(cfg)))
    changed = {k: v for k, v in changes.items() if k not in RESUME_MAY_CHANGE and k.partition(".")[0] not in unread}
    if changed and not force:
        shown = "; ".join(f"{k}: {v0!r} -> {v1!r}" for k, (v0, v1) in list(changed.items())[:8])
        raise ConfigError(
            f"--resume: the recipe differs from {saved_path} in {len(changed)} key(s): {shown}. Resume with the "
            f"run's own recipe (r1kit train {saved_path} --output-dir {run_dir} --resume), or pass --force to "
            "continue with the new values where the checkpoint allows it"
        )
    if changed:
        log.warning("--resume --force: continuing with changed keys %s", ", ".join(changed))


ERROR_LOG = "r1kit.log"


def log_to_run_dir(run_dir: Path) -> None:
    """Copy the log (INFO and up, and the traceback of an error that ends the run) to ``RUN/r1kit.log``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rank = os.environ.get("RANK", "0")
    handler = logging.FileHandler(run_dir / (ERROR_LOG if rank == "0" else f"r1kit-rank{rank}.log"))
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


def add_run_arguments(p: argparse.ArgumentParser, *, set_example: str) -> None:
    """The options of every command that writes a run directory from a recipe (``train``, ``sft``)."""
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a recipe key, e.g. --set {set_example} (repeatable)",
    )
    p.add_argument("--output-dir", help="run directory (default: logging.output_dir or runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    p.add_argument(
        "--force", action="store_true", help="with --resume: go on although the recipe differs from RUN/config.yaml"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1kit", description="R1-style GRPO post-training for MoE language models")
    parser.add_argument("--version", action="version", version=f"r1kit {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run a recipe")
    train.add_argument("recipe", help="recipe YAML, e.g. recipes/r1_zero_tiny.yaml")
    add_run_arguments(train, set_example="algorithm.num_generations=16")
    train.set_defaults(func=_train)
    add_inspect_commands(sub)
    add_tool_commands(sub)
    add_eval_commands(sub)
    add_sft_commands(sub)
    add_sample_commands(sub)
    add_pipeline_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if not sys.stderr.isatty():  # in a log file, the hub's and transformers' loading bars are only noise
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "transformers", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:
        if not isinstance(e, user_errors()):
            raise
        # The message names the recipe key and the fix; the traceback, for a bug report, goes to the run's log
        # file only (the console shows the message alone).
        files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (e,), sys.exc_info())
        for h in files:
            h.handle(record)
        where = f" (traceback in {files[0].baseFilename})" if files else ""
        print(f"r1kit: config error: {e}{where}", file=sys.stderr)
        return 2


def user_errors() -> tuple[type[Exception], ...]:
    """Errors a user fixes in the recipe or its files: each message names the key and the fix (exit code 2)."""
    # Only modules already imported can have raised one of theirs: looking them up in sys.modules keeps a config
    # error from importing torch (``rollouts``) just to be recognised.
    found: list[type[Exception]] = [ConfigError]
    for module, names in USER_ERRORS.items():
        if module in sys.modules:
            found += [getattr(sys.modules[module], n) for n in names]
    return tuple(found)


USER_ERRORS = {
    "rollouts.data": ("DataError",),
    "rewards.scoring": ("RewardSetupError", "RewardOutputError", "RewardFailureError"),
}


if __name__ == "__main__":
    sys.exit(main())
