"""Rejection sampling (``r1kit sample``; the pipeline calls ``sample_model``): k completions per prompt, scored by the
recipe's rewards, filtered into an SFT dataset, with each prompt's pass rate.

The filters (``select``, a pure function) apply in this order, and a dropped sample counts under the first it fails:

- ``incorrect``: the accuracy reward gave less than 1.0, or abstained (``sample.require_correct``);
- ``format``: the format reward gave less than 1.0, or abstained (``sample.require_format``, when there is one);
- ``language``: the language reward gave less than ``sample.min_language``, or abstained (when one is named);
- ``truncated``: cut at ``rollout.max_new_tokens`` (``sample.drop_truncated``, on by default: half a chain of
  thought is no demonstration);
- ``too_long``: more than ``sample.max_completion_tokens`` tokens;
- ``duplicate``: the same stripped text as a better sample of the prompt (``sample.dedupe``);
- ``max_per_prompt``: beyond the best ``sample.max_per_prompt`` of the prompt (1 is best-of-k).

"Better" is the ranking of ``rank_key``: higher total reward, then fewer tokens, then sampled first. A prompt's pass
rate is its correct samples over all k, before any filter; prompts with 0 < pass rate < 1 are the ones RL can learn
from (DAPO's dynamic-sampling filter, open-r1's pass-rate filter) and go to ``rl_prompts.jsonl``.

Generation runs in chunks of ``CHUNK_PROMPTS`` prompts, chunk ``i`` seeded with ``sample.seed + i``; each chunk's
scored samples are saved to ``DIR/.partial/chunk-NNNN.jsonl`` as it finishes, so a resumed run skips the chunks there
and draws the same samples for the others. The outputs are computed from all chunks at the end.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.configio import ConfigError

if TYPE_CHECKING:
    from rl.config import RecipeConfig

log = logging.getLogger(__name__)

CHUNK_PROMPTS = 32
"""Prompts generated per round and saved per chunk file (as ``rl.evaluation``'s rounds)."""
CORRECT_AT = 1.0
"""A sample is correct when the accuracy reward gives it at least this; format needs it too (``rl.evaluation``)."""
DROP_REASONS = ("incorrect", "format", "language", "truncated", "too_long", "duplicate", "max_per_prompt")
PARTIAL = ".partial"
FORMATS = ("jsonl", "parquet")
# Keys every output row carries; a prompt's reward column of the same name would be lost, so it is an error.
ROW_KEYS = ("prompt", "completion", "prompt_id", "rewards", "total", "num_tokens", "pass_rate", "n", "correct")

# ------------------------------------------------------------------------------------------ pure filter functions


@dataclass(frozen=True)
class Sample:
    """One scored completion, as a chunk file stores it."""

    prompt_id: str
    index: int
    """Its place among the prompt's k samples (sample order)."""
    text: str
    rewards: dict[str, float | None]
    """Reward label -> value (None: abstained)."""
    total: float | None
    """Weighted total (None where a weighted reward abstained)."""
    num_tokens: int
    finish_reason: str


@dataclass(frozen=True)
class Filters:
    """Which samples ``select`` keeps (the ``sample`` section, with the reward labels resolved)."""

    accuracy: str
    format: str | None = None
    language: str | None = None
    require_correct: bool = True
    require_format: bool = True
    min_language: float = 1.0
    max_completion_tokens: int | None = None
    dedupe: bool = True
    max_per_prompt: int | None = None
    drop_truncated: bool = True


def is_correct(s: Sample, accuracy: str) -> bool:
    v = s.rewards[accuracy]
    return v is not None and v >= CORRECT_AT


def pass_rate(group: Sequence[Sample], accuracy: str) -> tuple[int, float]:
    """A prompt's correct samples and their share of all its samples, before any filter.

    >>> pass_rate([Sample("p", i, "", {"acc": v}, v, 1, "eos") for i, v in enumerate([1.0, 0.0, None, 1.0])], "acc")
    (2, 0.5)
    """
    correct = sum(is_correct(s, accuracy) for s in group)
    return correct, correct / len(group)


def rank_key(s: Sample) -> tuple[float, int, int]:
    """Best first: higher total (no total ranks last), then fewer tokens, then sampled earlier."""
    return (-s.total if s.total is not None else math.inf, s.num_tokens, s.index)


def _first_failure(s: Sample, f: Filters) -> str | None:
    """The per-sample filter ``s`` fails first (the module docstring's order), or None."""
    if f.require_correct and not is_correct(s, f.accuracy):
        return "incorrect"
    if f.require_format and f.format is not None and not _at_least(s.rewards[f.format], CORRECT_AT):
        return "format"
    if f.language is not None and not _at_least(s.rewards[f.language], f.min_language):
        return "language"
    if f.drop_truncated and s.finish_reason == "length":
        return "truncated"
    if f.max_completion_tokens is not None and s.num_tokens > f.max_completion_tokens:
        return "too_long"
    return None


def _at_least(v: float | None, bound: float) -> bool:
    return v is not None and v >= bound


def select(group: Sequence[Sample], f: Filters) -> tuple[list[Sample], Counter[str]]:
    """The samples of one prompt that pass every filter (in sample order) and the count of each drop reason.

    >>> s = [Sample("p", i, t, {"acc": a}, a, n, "eos") for i, (t, a, n) in enumerate(
    ...     [("x", 1.0, 5), ("y", 0.0, 5), (" x", 1.0, 5), ("z", 1.0, 3)])]
    >>> kept, dropped = select(s, Filters("acc", max_per_prompt=1))  # "x" twice; "z" ties on total but is shorter
    >>> [k.text for k in kept], sorted(dropped.items())
    (['z'], [('duplicate', 1), ('incorrect', 1), ('max_per_prompt', 1)])
    """
    dropped: Counter[str] = Counter()
    passing = []
    for s in group:
        reason = _first_failure(s, f)
        if reason is None:
            passing.append(s)
        else:
            dropped[reason] += 1
    kept, seen = [], set()
    for s in sorted(passing, key=rank_key):  # best first: of duplicates, and of too many, the best stay
        key = s.text.strip()
        if f.dedupe and key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)  # dedupe comes first: a copy of a sample that max_per_prompt drops is still a duplicate
        if f.max_per_prompt is not None and len(kept) >= f.max_per_prompt:
            dropped["max_per_prompt"] += 1
        else:
            kept.append(s)
    return sorted(kept, key=lambda s: s.index), dropped


HISTOGRAM_BINS = ("0", "(0, 0.25]", "(0.25, 0.5]", "(0.5, 0.75]", "(0.75, 1)", "1")


def pass_rate_bin(rate: float) -> str:
    """The histogram bin of a pass rate: never and always solved apart, the rest in quarters.

    >>> [pass_rate_bin(r) for r in (0.0, 0.25, 0.26, 0.5, 0.75, 0.875, 1.0)]
    ['0', '(0, 0.25]', '(0.25, 0.5]', '(0.25, 0.5]', '(0.5, 0.75]', '(0.75, 1)', '1']
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"pass_rate_bin: a pass rate is in [0, 1], got {rate}")
    if rate == 0.0:
        return HISTOGRAM_BINS[0]
    if rate == 1.0:
        return HISTOGRAM_BINS[-1]
    return HISTOGRAM_BINS[min(math.ceil(rate * 4), 4)]


def pass_rate_stats(rates: Sequence[float]) -> dict[str, Any]:
    """Histogram (bin label -> prompts, every bin listed), always / never solved counts and the mean (NaN: none).

    >>> s = pass_rate_stats([0.0, 0.5, 1.0, 1.0])
    >>> s["pass_rate_histogram"]["1"], s["always_solved"], s["never_solved"], s["mean_pass_rate"]
    (2, 2, 1, 0.625)
    """
    hist = dict.fromkeys(HISTOGRAM_BINS, 0)
    for r in rates:
        hist[pass_rate_bin(r)] += 1
    return {
        "pass_rate_histogram": hist,
        "always_solved": hist["1"],
        "never_solved": hist["0"],
        "mean_pass_rate": sum(rates) / len(rates) if rates else math.nan,
    }


# ------------------------------------------------------------------------------------------------- the run


def sample_model(
    model_or_run: str,
    cfg: RecipeConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    fmt: str = "jsonl",
    data: str | None = None,
) -> dict[str, Any]:
    """Sample, score and filter ``cfg.sample.k`` completions of each prompt of ``cfg``'s ``sample.prompts`` set
    (``data``: a file or task instead, read as ``r1kit eval --data``), write the outputs into ``out_dir`` and return
    the summary (``summary.json``). ``model_or_run``: a run directory, a model directory, a hub id or ``tiny://``."""
    from rewards.scoring import RewardScorer, bind_rewards, trainer_state
    from rl.config import dump_recipe
    from rl.tools_cli import load_model

    if fmt not in FORMATS:
        raise ConfigError(f"--format: must be one of {list(FORMATS)}, got {fmt!r}")
    out_dir = Path(out_dir)
    check_out_dir(out_dir, resume=resume)
    rules, filters = resolve_filters(cfg)
    loaded = load_model(model_or_run, arg="MODEL_OR_RUN") if cfg.data.template == "chat" else None
    prompts, described = sample_prompts(cfg, data, tokenizer=loaded and loaded.tokenizer)
    columns = sorted({c for p in prompts for c in p.columns})
    clash = [c for c in columns if c in ROW_KEYS]
    if clash:
        from rollouts.data import DataError

        raise DataError(f"data: prompt column(s) {clash} clash with r1kit sample's own output columns; rename them")
    scorer = RewardScorer(bind_rewards(rules, columns), max_error_fraction=cfg.rewards.max_error_fraction)
    settings = generation_settings(model_or_run, cfg, rules, described)
    _check_partial(out_dir, settings, resume=resume)  # before the model loads: a mismatch answers at once
    t0 = time.time()
    chunks = [prompts[i : i + CHUNK_PROMPTS] for i in range(0, len(prompts), CHUNK_PROMPTS)]
    state = trainer_state(global_step=cfg.training.max_steps, max_steps=cfg.training.max_steps)
    groups = _sample_chunks(model_or_run, loaded, cfg, chunks, scorer, state, out_dir, filters, settings, progress)
    summary = write_outputs(out_dir, prompts, groups, filters, fmt=fmt)
    summary["settings"] = {**settings, "prompts": len(prompts), "filters": asdict(filters), "format": fmt}
    summary["wall_seconds"] = round(time.time() - t0, 2)
    from core.files import atomic_write_text

    atomic_write_text(out_dir / "sample_config.yaml", dump_recipe(cfg))
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


IGNORED_IN_OUT = {"r1kit.log"}
"""Files of an --out directory that do not make it "in use" (the CLI's log, opened before the check)."""


def check_out_dir(out_dir: Path, *, resume: bool) -> None:
    """A fresh run needs an empty (or new) ``--out``; a resumed one a directory that an ``r1kit sample`` started."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out: {str(out_dir)!r} is a file; pass a directory")
    held = [p.name for p in out_dir.iterdir() if p.name not in IGNORED_IN_OUT] if out_dir.is_dir() else []
    if held and not resume:
        raise ConfigError(
            f"--out: {str(out_dir)!r} is not empty ({', '.join(sorted(held)[:4])}); pass --resume to continue the "
            "sample run there, --overwrite to start it over, or another --out"
        )
    if held and resume and not (out_dir / PARTIAL / "settings.json").is_file():
        raise ConfigError(
            f"--resume: {str(out_dir)!r} holds no r1kit sample run (no {PARTIAL}/settings.json); pass an empty or "
            "new --out"
        )


def resolve_filters(cfg) -> tuple[list[Any], Filters]:
    """The rules to score with (a named reward the recipe lacks added at weight 0) and the filters."""
    from rl.evaluation import pick_rules

    s = cfg.sample
    try:
        rules, acc, fmt = pick_rules(cfg.rewards.rules, s.accuracy_reward, s.format_reward)
    except ConfigError as e:
        raise _renamed(e, accuracy="sample.accuracy_reward", format="sample.format_reward") from None
    lang = None
    if s.language_reward is not None:
        try:  # pick_rules' first pick resolves any label (a registered reward the recipe lacks: added at weight 0)
            rules, lang, _ = pick_rules(rules, s.language_reward, "none")
        except ConfigError as e:
            raise _renamed(e, accuracy="sample.language_reward") from None
    filters = Filters(
        accuracy=acc,
        format=fmt,
        language=lang,
        require_correct=s.require_correct,
        require_format=s.require_format,
        min_language=s.min_language,
        max_completion_tokens=s.max_completion_tokens,
        dedupe=s.dedupe,
        max_per_prompt=s.max_per_prompt,
        drop_truncated=s.drop_truncated,
    )
    return rules, filters


def _renamed(e: ConfigError, **keys: str) -> ConfigError:
    """``pick_rules``' error, naming the recipe key instead of ``r1kit eval``'s flag."""
    msg = str(e)
    for flag, key in keys.items():
        msg = msg.replace(f"--{flag}-reward", key, 1)
    return ConfigError(msg.replace("pass one of those", "set one of those"))


def sample_prompts(cfg, data: str | None, *, tokenizer=None) -> tuple[list, str]:
    """The first ``sample.limit`` prompts of the recipe's ``sample.prompts`` set, or of ``data`` (``--data``)."""
    from rl.evaluation import eval_prompts
    from rollouts.data import load_prompt_sets

    limit = cfg.sample.limit
    if data is not None:
        return eval_prompts(cfg, data, limit=limit, tokenizer=tokenizer)
    d = cfg.data
    sets = load_prompt_sets(**d.prompt_set_args(), tokenizer=tokenizer)
    which = cfg.sample.prompts
    prompts = (sets.train if which == "train" else sets.eval)[:limit]
    if not prompts:
        raise ConfigError(f"sample.prompts: the recipe's {which!r} set is empty (data.num_eval: 0?); pick the other")
    source = f"task {d.task}" if d.task is not None else d.path
    return prompts, f"{source} {which} prompts (seed {d.seed})"


def generation_settings(model_or_run: str, cfg, rules, described: str) -> dict[str, Any]:
    """What decides the samples: a resumed run must match the chunks' (filters may change: they apply at the end)."""
    r, s = cfg.rollout, cfg.sample
    return {
        "model": str(model_or_run),
        "data": described,
        "template": cfg.data.template,
        "k": s.k,
        "temperature": s.temperature or r.temperature,
        "top_p": r.top_p,
        "top_k": r.top_k,
        "max_new_tokens": r.max_new_tokens,
        "stop": list(r.stop),
        "seed": s.seed,
        "backend": r.backend,
        "rules": [asdict(spec) for spec in rules],
    }


def _check_partial(out_dir: Path, settings: dict[str, Any], *, resume: bool) -> None:
    """On resume, the settings the saved chunks were drawn with must be these (``generation_settings``)."""
    from rl.config import recipe_changes

    path = out_dir / PARTIAL / "settings.json"
    if resume and path.is_file():
        saved = json.loads(path.read_text())
        changed = recipe_changes(saved, json.loads(json.dumps(settings)))
        if changed:
            shown = "; ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, (a, b) in list(changed.items())[:6])
            raise ConfigError(
                f"--resume: {out_dir}'s samples were drawn with other settings ({shown}); resume with the same model, "
                "recipe and sample settings (only the filters may change), or pass --overwrite"
            )


def _short(v: Any, width: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= width else text[: width - 3] + "..."


def _sample_chunks(model_or_run, loaded, cfg, chunks, scorer, state, out_dir, filters, settings, progress: bool):
    """Every chunk's samples grouped by prompt: read from ``.partial/`` when there, else generated and saved (the
    settings first, once the model has loaded: a model that fails to load leaves ``--out`` as it was)."""
    from tqdm.auto import tqdm

    from core.files import atomic_write_text

    groups: list[list[Sample]] = []
    kept = total = 0
    backend = None
    bar = tqdm(total=sum(map(len, chunks)), desc="sample", unit="prompt", disable=not progress, file=sys.stderr)
    with bar:
        for i, chunk in enumerate(chunks):
            path = out_dir / PARTIAL / f"chunk-{i:04d}.jsonl"
            found = read_chunk(path, chunk) if path.is_file() else None
            if found is None:
                if backend is None:
                    loaded = loaded or _load(model_or_run)
                    backend = _backend(loaded, cfg)
                    atomic_write_text(out_dir / PARTIAL / "settings.json", json.dumps(settings, indent=2) + "\n")
                found = _generate_chunk(backend, cfg, chunk, i, scorer, state)
                _write_chunk(path, found)
            for g in found:
                total += len(g)
                kept += len(select(g, filters)[0])
            groups += found
            bar.update(len(chunk))
            bar.set_postfix_str(f"kept {kept}/{total}")
    return groups


def _load(model_or_run: str):
    from rl.tools_cli import load_model

    return load_model(model_or_run, arg="MODEL_OR_RUN")


def _backend(loaded, cfg):
    """The recipe's rollout backend at the sampling temperature, as ``r1kit eval`` builds it."""
    from rl.evaluation import make_backend

    r = cfg.rollout
    return make_backend(
        loaded,
        cfg,
        temperature=cfg.sample.temperature or r.temperature,
        max_new_tokens=r.max_new_tokens,
        seed_requests=True,  # vLLM: each chunk's draws follow its torch seed, so a resumed chunk redraws them
    )


def _generate_chunk(backend, cfg, chunk, index: int, scorer, state) -> list[list[Sample]]:
    """k scored samples of each prompt of chunk ``index``, torch seeded with ``sample.seed + index``."""
    import torch

    from rollouts.backends import torch_threads

    cuda = torch.cuda.is_available()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []):
        with torch_threads(cfg.training.torch_threads):
            torch.manual_seed(cfg.sample.seed + index)
            batch = backend.generate(chunk, list(range(len(chunk))), num_generations=cfg.sample.k)
    scores = scorer.score(
        batch.reward_prompts,
        batch.reward_completions,
        batch.columns(),
        completion_ids=batch.completion_ids,
        trainer_state=state,
    )
    groups: list[list[Sample]] = [[] for _ in chunk]
    for j, c in enumerate(batch.completions):  # grouped by group id (the prompt's place in the chunk)
        g = groups[c.group_id]
        rewards = {label: scores[label].values[j] for label in scores.labels}
        g.append(Sample(c.prompt.prompt_id, len(g), c.text, rewards, scores.total[j], c.num_tokens, c.finish_reason))
    return groups


def _write_chunk(path: Path, groups: list[list[Sample]]) -> None:
    from core.files import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(asdict(s), ensure_ascii=False) + "\n" for g in groups for s in g))


def read_chunk(path: Path, chunk: Sequence[Any]) -> list[list[Sample]]:
    """A saved chunk's samples grouped by prompt; it must hold the samples of exactly ``chunk``'s prompts."""
    by_id: dict[str, list[Sample]] = {}
    for line in path.read_text().splitlines():
        s = Sample(**json.loads(line))
        by_id.setdefault(s.prompt_id, []).append(s)
    wanted = [p.prompt_id for p in chunk]
    if list(by_id) != wanted:
        raise ConfigError(
            f"--resume: {path} holds the samples of other prompts ({list(by_id)[:3]}..., expected {wanted[:3]}...): "
            "the prompts changed (data or sample.limit); resume with the same ones, or pass --overwrite"
        )
    return list(by_id.values())


# ----------------------------------------------------------------------------------------------- outputs


def write_outputs(out_dir: Path, prompts, groups: list[list[Sample]], filters: Filters, *, fmt: str) -> dict:
    """``samples.jsonl`` / ``.parquet``, ``pass_rates.jsonl`` and ``rl_prompts.jsonl`` (each atomically); returns
    the counts of the summary."""
    from core.files import atomic_write_text

    samples, rates, rl_prompts = [], [], []
    dropped: Counter[str] = Counter(dict.fromkeys(DROP_REASONS, 0))
    for p, g in zip(prompts, groups, strict=True):
        correct, rate = pass_rate(g, filters.accuracy)
        kept, why = select(g, filters)
        dropped.update(why)
        for s in kept:
            samples.append(
                {"prompt": p.text, "completion": s.text, "prompt_id": p.prompt_id, **p.columns, "rewards": s.rewards}
                | {"total": s.total, "num_tokens": s.num_tokens, "pass_rate": rate}
            )
        rates.append({"prompt_id": p.prompt_id, "prompt": p.text, **p.columns, "n": len(g), "correct": correct})
        rates[-1]["pass_rate"] = rate
        if 0.0 < rate < 1.0:
            rl_prompts.append({"prompt": p.text, **p.columns})
    name = f"samples.{fmt}"
    if fmt == "parquet":
        _write_parquet(out_dir / name, samples)
    else:
        atomic_write_text(out_dir / name, _jsonl(samples))
    atomic_write_text(out_dir / "pass_rates.jsonl", _jsonl(rates))
    atomic_write_text(out_dir / "rl_prompts.jsonl", _jsonl(rl_prompts))
    return {
        "kind": "sample",
        "kept": len(samples),
        "total": sum(map(len, groups)),
        "prompts": len(prompts),
        "dropped": dict(dropped),
        **pass_rate_stats([r["pass_rate"] for r in rates]),
        "rl_prompts": len(rl_prompts),
        "files": {"samples": name, "pass_rates": "pass_rates.jsonl", "rl_prompts": "rl_prompts.jsonl"},
    }


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.files import atomic_write

    empty = {"prompt": pa.array([], pa.string()), "completion": pa.array([], pa.string())}
    table = pa.Table.from_pylist(rows) if rows else pa.table(empty)
    atomic_write(path, lambda f: pq.write_table(table, f))
