"""Reading stored rollouts: select (filter, sort, limit) and render as a rich table with the reward breakdown.

Model output is shown as plain ``rich.text.Text``, never parsed as markup: a completion containing ``[bold]`` or
``[/]`` prints as written. And every text that comes from a model, a program or a reward passes through
``printable`` on its way to a terminal or a notebook (``rollouts_table``, ``breakdown``, ``safe_frame``): control
bytes, escape sequences and bidi overrides are shown escaped (``\\x1b[2J``), never interpreted - a completion
must not be able to clear the screen, retitle the terminal or reorder what is shown around it.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from rollouts.store import reward_names

if TYPE_CHECKING:
    import pandas as pd

_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f"  # C0 controls but \t \n (ESC starts terminal sequences; NUL, BS, CR rewrite
    # lines), DEL, C1 (\x9b is a one-byte CSI)
    "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidi marks, embeddings, overrides, isolates
    "\u2028\u2029]"  # line and paragraph separators: break lines where the viewer does not expect it
)


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: Any) -> str:
    """``text`` with control characters, C1 controls and bidi overrides written as escapes (``\\x1b``,
    ``\\u202e``); newlines and tabs stay layout, everything else (backslashes, CJK, emoji) as is. The one escaping
    function of every text view of rollouts: a completion cannot drive the terminal or notebook showing it.

    >>> printable("ok\\n\\tnext \\x1b[2J\\x1b]0;pwned\\x07 a\\rb\\x00\\x08 \\x9b \\u202eevil \\\\frac")
    'ok\\n\\tnext \\\\x1b[2J\\\\x1b]0;pwned\\\\x07 a\\\\x0db\\\\x00\\\\x08 \\\\x9b \\\\u202eevil \\\\frac'
    """
    return _UNSAFE.sub(_escape, text if isinstance(text, str) else str(text))


def safe_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` for display (notebooks): every text cell and column name through ``printable``. Other
    cells are left alone (pandas shows lists and dicts by ``repr``, which escapes control characters itself), and
    pandas' HTML rendering escapes ``<`` and ``&``, so a completion holding ``<script>`` shows as text.

    >>> import pandas as pd
    >>> safe_frame(pd.DataFrame({"completion": ["\\x1b[2Jhi", "ok"], "n": [1, 2]})).to_dict("list")
    {'completion': ['\\\\x1b[2Jhi', 'ok'], 'n': [1, 2]}
    """
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or str(out[col].dtype) in ("string", "str"):
            out[col] = out[col].map(lambda v: printable(v) if isinstance(v, str) else v)
    out.columns = [printable(c) if isinstance(c, str) else c for c in out.columns]
    return out


SORT_KEYS = {"reward": "reward", "advantage": "advantage", "length": "num_tokens"}
"""``--sort`` choice -> column."""


class FilterError(ValueError):
    """A ``--filter`` expression pandas cannot evaluate on the rollout columns."""


def select(
    df: pd.DataFrame,
    *,
    filter_expr: str | None = None,
    sort: str | None = None,
    ascending: bool = False,
    limit: int | None = None,
) -> pd.DataFrame:
    """Rows matching ``filter_expr`` (a ``DataFrame.query`` expression), sorted by ``sort``, the first ``limit``.

    Without ``sort`` rows stay in batch order (group by group). Columns whose names hold ``/`` are quoted with
    backticks in a filter: ```reward/math_accuracy` == 0 and finish_reason == "length"``.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"reward": [0.0, 1.0, 0.5], "num_tokens": [3, 9, 5], "reward/a": [0.0, 1.0, 0.5]})
    >>> select(df, filter_expr="`reward/a` > 0", sort="length", limit=1)["num_tokens"].tolist()
    [9]
    """
    if filter_expr:
        try:
            df = df.query(filter_expr, engine="python")
        except (SyntaxError, NameError, KeyError, TypeError, ValueError) as e:
            raise FilterError(
                f"--filter {filter_expr!r}: {type(e).__name__}: {e}. Columns: {', '.join(df.columns)} "
                "(quote names with / in backticks: `reward/math_accuracy` == 0)"
            ) from None
    if sort:
        if sort not in SORT_KEYS:
            raise ValueError(f"sort: unknown {sort!r}; known: {sorted(SORT_KEYS)}")
        df = df.sort_values(SORT_KEYS[sort], ascending=ascending, na_position="last", kind="stable")
    return df.head(limit) if limit is not None else df


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _value_style(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "dim"
    return "green" if v > 0 else "red" if v < 0 else "yellow"


def breakdown(row: pd.Series, names: list[str], max_info: int = 80) -> Text:
    """Each reward's value and what explains it, e.g. ``math_accuracy 1  extracted=17 gold=17``."""
    out = Text()
    for i, name in enumerate(names):
        v = row.get(f"reward/{name}")
        if i:
            out.append("\n")
        out.append(f"{printable(name)} ", style="bold")
        out.append("abstain" if _fmt(v) == "-" else _fmt(v), style=_value_style(v))
        raw = row.get(f"reward_info/{name}")
        info = json.loads(raw) if isinstance(raw, str) and raw else {}
        if info:
            text = " ".join(
                f"{k}={json.dumps(val, ensure_ascii=False) if not isinstance(val, str) else val}"
                for k, val in info.items()
            )
            text = text if len(text) <= max_info else text[: max_info - 1] + "…"
            out.append("  " + printable(text), style="dim")  # program output, extracted answers: model text
    return out


def rollouts_table(
    df: pd.DataFrame, *, title: str | None = None, max_chars: int = 600, show_step: bool | None = None
) -> Table:
    """One row per completion: group, prompt, completion, total reward, per-reward breakdown, advantage, length.

    ``show_step`` adds a step column (default: when the rows span several steps)."""
    names = reward_names(df)
    many_steps = df["step"].nunique() > 1 if show_step is None else show_step
    # The title holds the user's --filter: shown as typed, never parsed as markup either.
    table = Table(title=None if title is None else Text(printable(title)), show_lines=True, expand=False)
    if many_steps:
        table.add_column("step", justify="right")
    table.add_column("group", justify="right")
    table.add_column("prompt", max_width=28)
    table.add_column("completion", ratio=3, min_width=30)
    table.add_column("reward", justify="right")
    table.add_column("breakdown", ratio=2, min_width=24)
    table.add_column("adv", justify="right")
    table.add_column("tokens", justify="right")
    for _, row in df.iterrows():
        text = row["completion"]
        completion = Text(printable(text if len(text) <= max_chars else text[: max_chars - 1] + "…"))
        if row["finish_reason"] == "length":
            completion.append(" [cut at max_new_tokens]", style="italic magenta")
        cells = [str(row["step"])] if many_steps else []
        cells += [str(row["group_id"])]
        table.add_row(
            *cells,
            Text(printable(row["prompt"])),
            completion,
            Text(_fmt(row["reward"]), style=_value_style(row["reward"])),
            breakdown(row, names),
            _advantage(row),
            str(row["num_tokens"]),
        )
    return table


def _advantage(row: pd.Series) -> Text:
    """The advantage, marked when dynamic sampling dropped the group (stored, but not trained on)."""
    out = Text(_fmt(row["advantage"]), style=_value_style(row["advantage"]))
    kept = row.get("kept")  # absent (no dynamic sampling) or NaN (a step stored before it existed): not dropped
    if kept is not None and not kept:
        out.append("\ndropped", style="dim italic")
    return out


def describe(df: pd.DataFrame) -> str:
    """One line about a set of rollouts: how many, in how many groups, mean reward, share of groups with no signal.

    >>> import pandas as pd
    >>> describe(pd.DataFrame({"step": [3, 3, 3, 3], "group_id": [0, 0, 1, 1], "reward": [1.0, 0.0, 1.0, 1.0]}))
    'step 3: 4 completions in 2 groups, mean reward 0.75, 1/2 groups with equal rewards (no learning signal)'
    """
    steps = sorted(df["step"].unique())
    where = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"
    groups = df.groupby(["step", "group_id"])["reward"]
    flat = int((groups.nunique(dropna=False) <= 1).sum())
    return (
        f"{where}: {len(df)} completions in {groups.ngroups} groups, mean reward {df['reward'].mean():.3g}, "
        f"{flat}/{groups.ngroups} groups with equal rewards (no learning signal)"
    )
