"""``r1kit eval MODEL_OR_RUN``: greedy accuracy, pass@k, maj@k, length and format rate over a dataset, as JSON and a
table (definitions in ``rl.evaluation``, whose ``evaluate_model`` this wraps)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.configio import ConfigError

EPILOG = """\
accuracy: the accuracy reward's mean on the greedy completions, an abstention counting as wrong (the trainer's
rule); the accuracy reward is the recipe's first rule unless --accuracy-reward. format_rate: the same for the
format reward (--format-reward, else the first other rule named *format*; '-' when none). pass@k: Chen et al.'s
unbiased 1 - C(n-c, k)/C(n, k) from n samples, c of them correct (accuracy reward >= 1; an abstention is not
correct), averaged over prompts. maj@k: majority vote over the first k samples' normalised extracted answers
(samples without one do not vote; a tie goes to the answer sampled first), right when that answer's first sample is.
"""


def _eval(args: argparse.Namespace) -> int:
    from rl.evaluation import check_counts, evaluate_model

    check_counts(k=args.k, n=args.n, limit=args.limit)  # before any loading: a bad count answers at once
    if args.json is not None and args.json.is_dir():
        raise ConfigError(f"--json: {str(args.json)!r} is a directory; pass a file path such as eval.json")
    result = evaluate_model(
        args.model,
        recipe=args.recipe,
        data=args.data,
        k=args.k,
        n=args.n,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        seed=args.seed,
        accuracy_reward=args.accuracy_reward,
        format_reward=args.format_reward,
        prompt_column=args.prompt_column,
        progress=True,
    )
    if args.json is not None:
        from core.files import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    _print_table(result)
    return 0


METRIC_ROWS = (
    ("accuracy", "greedy accuracy"),
    ("format_rate", "greedy format rate"),
    ("completion_len", "greedy completion tokens"),
    ("truncated_frac", "greedy truncated"),
    ("abstain_frac", "greedy abstained"),
    ("pass@1", "pass@1 (samples)"),
    ("pass@{k}", "pass@{k}"),
    ("maj@{k}", "maj@{k}"),
    ("sample_format_rate", "sample format rate"),
    ("sample_completion_len", "sample completion tokens"),
    ("sample_abstain_frac", "sample abstained"),
)


def table_rows(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, value) rows of the table: the metrics in a fixed order, ``-`` for a missing one.

    >>> table_rows({"accuracy": 0.5, "pass@1": 0.25, "pass@2": 0.4, "settings": {"k": 2}})[:2]
    [('greedy accuracy', '0.500'), ('greedy format rate', '-')]
    """
    k = result["settings"]["k"]
    rows = []
    for key, name in METRIC_ROWS:
        key, name = key.format(k=k), name.format(k=k)
        if key == "pass@1" and k == 1 and rows and rows[-1][0].startswith("pass@1"):
            continue
        v = result.get(key)
        rows.append((name, "-" if v is None else f"{v:.1f}" if key.endswith("_len") else f"{v:.3f}"))
    return rows


def _print_table(result: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    s = result["settings"]
    table = Table(show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in table_rows(result):
        table.add_row(name, value)
    console = Console(width=None if sys.stdout.isatty() else 160, soft_wrap=True)
    console.print(f"r1kit eval: {s['model_or_run']} on {s['prompts']} prompts ({s['data']})", markup=False)
    console.print(table)
    console.print(
        f"accuracy: {s['accuracy_reward']}, format: {s['format_reward'] or '-'}; n={s['n']} samples per prompt at "
        f"temperature {s['temperature']}, max_new_tokens {s['max_new_tokens']}, seed {s['seed']}; "
        f"{s['wall_seconds']:.0f}s",
        markup=False,
    )


def add_eval_commands(sub: argparse._SubParsersAction) -> None:
    from rl.tools_cli import MODEL_HELP

    ev = sub.add_parser(
        "eval",
        help="greedy accuracy, pass@k, maj@k, length and format rate of a model or run over a dataset",
        description="Greedy completions and --n sampled ones per prompt, scored by the recipe's rewards (a run's "
        "config.yaml; for a model, --recipe or the defaults). Prints a table; --json also writes every number.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("model", metavar="MODEL_OR_RUN", help=MODEL_HELP)
    ev.add_argument(
        "--data",
        help="a JSONL/JSON/Parquet/CSV file, a dataset directory or hub id (read with the recipe's data.adapter), or "
        "a task name such as arith; default: the recipe's held-out split (data.num_eval prompts)",
    )
    ev.add_argument("--recipe", help="recipe YAML giving template, rewards, data and rollout settings (a model's)")
    ev.add_argument("--k", type=int, default=8, help="k of pass@k and maj@k (default 8)")
    ev.add_argument("--n", type=int, help="samples per prompt for pass@k (default: k; must be >= k)")
    ev.add_argument("--temperature", type=float, help="sampling temperature (default: the recipe's rollout's)")
    ev.add_argument("--max-new-tokens", type=int, help="completion cap (default: rollout.max_new_tokens)")
    ev.add_argument("--limit", type=int, metavar="N", help="evaluate the first N prompts only")
    ev.add_argument("--seed", type=int, default=0, help="torch seed for the samples (default 0)")
    ev.add_argument("--accuracy-reward", metavar="NAME", help="reward label scored as accuracy (default: first rule)")
    ev.add_argument(
        "--format-reward",
        metavar="NAME",
        help="reward label (or registered reward) scored as format; 'none' for no format rate (default: the first "
        "other rule named *format*)",
    )
    ev.add_argument("--prompt-column", help="question column of a --data file (default: the recipe's)")
    ev.add_argument("--json", type=Path, metavar="OUT.json", help="also write every metric and setting here")
    ev.set_defaults(func=_eval)
