"""``r1kit sample MODEL_OR_RUN --out DIR``: rejection sampling into an SFT dataset, with each prompt's pass rate
(definitions in ``rl.sampling``, whose ``sample_model`` this wraps)."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.configio import ConfigError

EPILOG = """\
Filters, in order (a dropped sample counts under the first it fails): incorrect (the accuracy reward, the recipe's
first rule unless sample.accuracy_reward, gave < 1 or abstained), format (sample.format_reward, else the first other
rule named *format*), language (sample.language_reward, if set), truncated (always), too_long
(sample.max_completion_tokens), duplicate (sample.dedupe), max_per_prompt (best first: total reward, then fewer
tokens; 1 = best-of-k). Pass rate = correct / k before any filter.

DIR gets samples.jsonl (prompt, completion, prompt_id, reward columns, rewards, total, num_tokens, pass_rate: r1kit
sft loads it with sft.dataset=DIR/samples.jsonl), pass_rates.jsonl, rl_prompts.jsonl (prompts with 0 < pass rate
< 1: train on them with data.path=DIR/rl_prompts.jsonl data.template=none data.task=null), summary.json and
sample_config.yaml. --resume reuses DIR/.partial/'s finished chunks (and may change the filters: they apply at the
end).
"""


def _sample(args: argparse.Namespace) -> int:
    from rl.sampling import FORMATS, sample_model

    if args.resume and args.overwrite:
        raise ConfigError("--resume / --overwrite: pass one of them (continue the run in --out, or start it over)")
    for flag, value in (("--k", args.k), ("--limit", args.limit)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag}: must be >= 1, got {value}")
    overrides = [*args.set]
    overrides += [f"sample.k={args.k}"] if args.k is not None else []
    overrides += [f"sample.limit={args.limit}"] if args.limit is not None else []
    cfg = sample_recipe(args.model, args.recipe, overrides)
    assert args.format in FORMATS  # argparse's choices
    if args.overwrite:
        clear_out_dir(args.out)
    from rl.cli import log_to_run_dir
    from rl.sampling import check_out_dir

    check_out_dir(args.out, resume=args.resume)  # before the log file appears in it
    log_to_run_dir(args.out)
    out, fmt = args.out, args.format
    summary = sample_model(args.model, cfg, out, resume=args.resume, progress=True, fmt=fmt, data=args.data)
    print_summary(summary, args.out)
    return 0


def sample_recipe(model_or_run: str, recipe: str | None, overrides: Sequence[str]):
    """The recipe as ``r1kit eval`` picks it (``--recipe``, else the run's ``config.yaml``, else the defaults), with
    ``--set`` overrides applied."""
    from rl.config import load_recipe
    from rl.evaluation import eval_recipe
    from rl.tools_cli import is_run_dir

    eval_recipe(model_or_run, recipe)  # its checks: MODEL_OR_RUN exists, --recipe loads
    path = Path(model_or_run).expanduser()
    source = recipe if recipe is not None else path / "config.yaml" if is_run_dir(path) else None
    return load_recipe(source, list(overrides))  # the recipe itself loaded above: an error here is an override's


def clear_out_dir(out: Path) -> None:
    """``--overwrite``: delete a previous ``r1kit sample`` output, never a directory that is something else."""
    from rl.sampling import PARTIAL

    if not out.is_dir() or not any(out.iterdir()):
        return
    if not ((out / PARTIAL).is_dir() or (out / "sample_config.yaml").is_file()):
        raise ConfigError(
            f"--overwrite: {str(out)!r} does not look like an r1kit sample output (no {PARTIAL}/ or "
            "sample_config.yaml); not deleting it: pass another --out"
        )
    shutil.rmtree(out)


def histogram_lines(hist: Mapping[str, int], width: int = 30) -> list[str]:
    """The pass-rate histogram as text bars, the longest ``width`` characters.

    >>> histogram_lines({"0": 4, "(0, 0.25]": 1, "1": 0}, width=8)
    ['0            ######## 4', '(0, 0.25]    ## 1', '1             0']
    """
    top = max(hist.values(), default=0) or 1
    return [f"{label:<12} {'#' * round(width * n / top)} {n}" for label, n in hist.items()]


def print_summary(summary: Mapping[str, Any], out: Path | None = None) -> None:
    """Kept / total and the drop reasons as a table, then the pass-rate histogram (stdout)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160, soft_wrap=True)
    s = summary["settings"]
    table = Table(title="r1kit sample", show_header=True)
    table.add_column("samples")
    table.add_column("count", justify="right")
    table.add_row("kept", f"{summary['kept']}/{summary['total']}")
    for reason, n in summary["dropped"].items():
        table.add_row(f"dropped: {reason}", str(n))
    console.print(table)
    console.print(
        f"{summary['prompts']} prompts x k={s['k']} at temperature {s['temperature']} from {s['model']} "
        f"({s['data']}); {summary['wall_seconds']:.0f}s",
        markup=False,
    )
    console.print("pass rate    prompts", markup=False)
    for line in histogram_lines(summary["pass_rate_histogram"]):
        console.print(line, markup=False)
    mean = summary["mean_pass_rate"]
    console.print(
        f"mean pass rate {mean:.3f}; always solved {summary['always_solved']}, never solved "
        f"{summary['never_solved']}; {summary['rl_prompts']} prompts for RL (0 < pass rate < 1)"
        + (f"; written to {out}" if out is not None else ""),
        markup=False,
    )


def add_sample_commands(sub: argparse._SubParsersAction) -> None:
    from rl.tools_cli import MODEL_HELP

    sp = sub.add_parser(
        "sample",
        help="rejection sampling: k scored completions per prompt, filtered into an SFT dataset, with pass rates",
        description="k completions per prompt with the recipe's rollout backend, scored by its rewards (a run's "
        "config.yaml; for a model, --recipe or the defaults), filtered (sample.* keys) and written to --out.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sp.add_argument("model", metavar="MODEL_OR_RUN", help=MODEL_HELP)
    sp.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory (new or empty)")
    sp.add_argument("--recipe", help="recipe YAML giving template, rewards, data, rollout and sample settings")
    sp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set sample.max_per_prompt=1 (repeatable)",
    )
    sp.add_argument(
        "--data",
        help="a JSONL/JSON/Parquet/CSV file, dataset directory or hub id (read with the recipe's data.adapter), or a "
        "task name (its held-out prompts, as r1kit eval); default: the recipe's sample.prompts set (train)",
    )
    sp.add_argument("--k", type=int, help="completions per prompt (sample.k; default 8)")
    sp.add_argument("--limit", type=int, metavar="N", help="sample the first N prompts only (sample.limit)")
    sp.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl", help="samples file format")
    sp.add_argument("--resume", action="store_true", help="continue in --out, reusing its finished chunks")
    sp.add_argument("--overwrite", action="store_true", help="delete a previous r1kit sample output in --out first")
    sp.set_defaults(func=_sample)
