"""``r1kit rollouts`` and ``r1kit plot``: read a run directory (finished or still training) from the shell."""

from __future__ import annotations

import argparse
import sys

from core.configio import ConfigError

FILTER_HELP = """\
a pandas DataFrame.query expression over the rollout columns (your own expression, evaluated with pandas'
python engine): step, group_id, prompt_id, prompt, completion, reward (null: no total), advantage, num_tokens,
finish_reason, mean_logprob, completion_ids, reward/<name>, reward_info/<name> (JSON text), data/<column>. Quote
names holding / in backticks, and the whole expression in single quotes for the shell. Examples: 'reward < 1';
'`reward/math_accuracy` == 0 and finish_reason == "length"'; 'completion.str.contains("</answer>.", regex=False)'
"""


def _rollouts(args: argparse.Namespace) -> int:
    from rich.console import Console

    from rollouts.store import load, stored_steps
    from rollouts.view import FilterError, describe, rollouts_table, select

    steps = stored_steps(args.run_dir)
    if not steps:
        raise ConfigError(f"{args.run_dir}: no rollouts stored (RUN/rollouts/step-*.parquet); is it a run directory?")
    if args.all_steps:
        df = load(args.run_dir)
    else:
        try:
            df = load(args.run_dir, args.step if args.step is not None else steps[-1])
        except FileNotFoundError as e:
            raise ConfigError(f"--step: {e}") from None
    try:
        shown = select(df, filter_expr=args.filter, sort=args.sort, ascending=args.ascending, limit=args.limit)
    except FilterError as e:
        raise ConfigError(str(e)) from None
    # Piped output gets a wide table instead of rich's 80-column default.
    console = Console(width=None if sys.stdout.isatty() else 160)
    order = f", sorted by {args.sort} ({'ascending' if args.ascending else 'descending'})" if args.sort else ""
    flt = f", filter {args.filter!r}" if args.filter else ""
    title = f"{describe(df)}\nshowing {len(shown)} of {len(df)}{order}{flt}"
    console.print(rollouts_table(shown, title=title, max_chars=args.max_chars, show_step=args.all_steps or None))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from rl.reporting.plots import write_plots

    try:
        result = write_plots(args.run_dir)
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    for path in result.written:
        print(path)
    for name, why in result.skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    ro = sub.add_parser(
        "rollouts",
        help="show a step's stored completions with their reward breakdown",
        description="Print stored rollouts (RUN/rollouts/step-*.parquet) as a table. Default: the latest step.",
    )
    ro.add_argument("run_dir", metavar="RUN_DIR", help="run directory (may still be training)")
    ro.add_argument("--step", type=int, help="step to show (default: the latest stored step)")
    ro.add_argument("--all-steps", action="store_true", help="search every stored step (with --filter / --sort)")
    ro.add_argument("--sort", choices=["reward", "advantage", "length"], help="sort by this, highest first")
    ro.add_argument("--ascending", action="store_true", help="sort lowest first")
    ro.add_argument("--filter", metavar="EXPR", help=FILTER_HELP)
    ro.add_argument("--limit", type=int, metavar="K", help="show at most K rows")
    ro.add_argument("--max-chars", type=int, default=600, help="cut completions longer than this (default 600)")
    ro.set_defaults(func=_rollouts)
    pl = sub.add_parser(
        "plot",
        help="write training-curve PNGs into RUN_DIR/plots",
        description="Reward per reward function, completion length, KL, clip fraction, entropy (when logged) "
        "and the MoE expert-load heatmap (when moe/expert_load is logged), from RUN_DIR/metrics.jsonl.",
    )
    pl.add_argument("run_dir", metavar="RUN_DIR", help="run directory (may still be training)")
    pl.set_defaults(func=_plot)
