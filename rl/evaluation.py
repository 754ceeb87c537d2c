"""Held-out evaluation of a model or a run (``r1kit eval``; the pipeline calls ``evaluate_model`` between stages).

What each number means, for a dataset of prompts and the recipe's rewards:

- ``accuracy``: the *accuracy reward*'s mean value on each prompt's greedy completion, an abstention counting as 0
  (wrong): the trainer's rule (``GRPOTrainer.evaluate``), so on the same prompts it is the summary's accuracy. The
  accuracy reward is the recipe's first rule, as in the trainer, unless ``accuracy_reward`` names another.
- ``format_rate``: the same mean for the *format reward*: ``format_reward`` if given, else the first other rule whose
  name contains ``format`` (``r1_format_strict`` in the tiny recipe); None (``-``) when there is none.
- ``completion_len``: mean greedy completion length in tokens (the EOS or stop token included, as in training).
- ``pass@k`` (Chen et al. 2021, eq. 1): per prompt, ``n`` samples of which ``c`` are correct give the unbiased
  ``1 - C(n-c, k) / C(n, k)``; averaged over prompts. A sample is *correct* when the accuracy reward gives it at
  least ``CORRECT_AT`` (1.0); an abstaining sample is not correct (the trainer's rule again).
- ``maj@k``: per prompt, a majority vote over the *first k* samples' final answers; 1 when the winning answer is
  correct. Answers are compared by their normalised extracted answer (``answer_key``), not by the math checker:
  the accuracy reward's own ``extracted`` answer when it reports one (``math_accuracy`` does), else
  ``rewards.math.verify.extract_answer`` of the text. A sample without an answer (or an abstaining sample whose
  reward extracted none) does not vote; a prompt where no sample votes scores 0. Ties go to the answer that appeared
  first in sample order; the winner is correct when the first sample that gave it is.
- ``sample_*``: the same means over all ``n`` sampled completions.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.configio import ConfigError

log = logging.getLogger(__name__)

CORRECT_AT = 1.0
"""A sample is correct for pass@k and maj@k when the accuracy reward gives it at least this (math_accuracy: 0 or 1)."""
CHUNK_PROMPTS = 32
"""Prompts generated (greedy, then sampled) per round: the progress line advances once per round."""


# ---------------------------------------------------------------------------------------- pure metric functions


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al. 2021's unbiased pass@k from ``n`` samples with ``c`` correct: ``1 - C(n-c, k) / C(n, k)``,
    computed as the product ``1 - prod_{i=n-c+1}^{n} (1 - k / i)`` (no huge binomials).

    >>> round(pass_at_k(5, 2, 2), 12)  # 1 - C(3, 2) / C(5, 2) = 1 - 3 / 10
    0.7
    >>> pass_at_k(5, 0, 2), pass_at_k(5, 4, 2), pass_at_k(4, 1, 1)  # none right; n - c < k; c / n
    (0.0, 1.0, 0.25)
    """
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must be in [1, n={n}], got {k}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c must be in [0, n={n}], got {c}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_index(answers: Sequence[str | None]) -> int | None:
    """The index of the sample standing for the most frequent answer (its first occurrence); None when no sample
    gave an answer. Ties go to the answer that appeared first; None answers do not vote.

    >>> majority_index(["3", "4", "4", None])
    1
    >>> majority_index(["4", "3", "3", "4"]), majority_index([None, "7"]), majority_index([None, None])
    (0, 1, None)
    """
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, a in enumerate(answers):
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
            first.setdefault(a, i)
    if not counts:
        return None
    return first[max(counts, key=lambda a: (counts[a], -first[a]))]


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """1.0 when the majority answer of the first ``k`` samples is correct (``correct``: per sample), else 0.0.

    >>> maj_at_k(["5", "6", "6", "5"], [True, False, False, True], 4)  # a 2-2 tie: "5" came first
    1.0
    >>> maj_at_k(["5", "6", "6", "5"], [True, False, False, True], 3), maj_at_k([None, None], [False, False], 2)
    (0.0, 0.0)
    """
    if len(answers) != len(correct):
        raise ValueError(f"maj_at_k: {len(answers)} answers but {len(correct)} verdicts")
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj_at_k: k must be in [1, {len(answers)}], got {k}")
    i = majority_index(answers[:k])
    return float(i is not None and correct[i])


def is_correct(value: float | None) -> bool:
    """Whether a sample counts as correct for pass@k and maj@k: full credit, never an abstention.

    >>> [is_correct(v) for v in (1.0, 0.5, 0.0, None)]
    [True, False, False, False]
    """
    return value is not None and value >= CORRECT_AT


def mean_abstain_as_zero(values: Sequence[float | None]) -> float:
    """The mean with abstentions (None) counted as 0, as ``GRPOTrainer.evaluate`` does; NaN for no values.

    >>> mean_abstain_as_zero([1.0, None, 0.0, 1.0])
    0.5
    """
    return sum(v or 0.0 for v in values) / len(values) if values else math.nan


def answer_key(extracted: str | None) -> str | None:
    """An extracted final answer as maj@k compares it: math-normalised (``rewards.math.normalize``), spaces removed.

    >>> answer_key(" 17. "), answer_key(r"\\dfrac12"), answer_key(""), answer_key(None)
    ('17', '\\\\frac{1}{2}', None, None)
    """
    from rewards.math.normalize import normalize

    if extracted is None:
        return None
    key = "".join(normalize(str(extracted)).split())
    return key or None


@dataclass(frozen=True)
class PromptResult:
    """One prompt's verdicts: its greedy completion and its ``n`` samples (in sample order)."""

    prompt_id: str
    greedy: float | None
    """The accuracy reward's value on the greedy completion (None: it abstained)."""
    greedy_format: float | None
    """The format reward's value on it (None: abstained, or no format reward)."""
    greedy_tokens: int
    greedy_truncated: bool
    """The greedy completion was cut at max_new_tokens."""
    samples: tuple[float | None, ...]
    """The accuracy reward's value on each sample."""
    answers: tuple[str | None, ...]
    """Each sample's ``answer_key`` (None: no answer; it does not vote)."""
    sample_format: tuple[float | None, ...]
    sample_tokens: tuple[int, ...]


def summarize(results: Sequence[PromptResult], *, k: int, with_format: bool) -> dict[str, float | None]:
    """The metrics of the module docstring over ``results`` (every prompt with the same number of samples).

    >>> r = [PromptResult("a", 1.0, 1.0, 10, False, (1.0, 0.0, None), ("3", "4", None), (1.0, 1.0, 0.0), (9, 9, 12)),
    ...      PromptResult("b", None, 0.0, 20, True, (0.0, 0.0, 1.0), ("5", "5", "6"), (1.0, 0.0, 1.0), (3, 3, 3))]
    >>> s = summarize(r, k=2, with_format=True)
    >>> s["accuracy"], s["format_rate"], s["completion_len"], s["truncated_frac"], s["abstain_frac"]
    (0.5, 0.5, 15.0, 0.5, 0.5)
    >>> round(s["pass@1"], 6), round(s["pass@2"], 6), s["maj@2"]  # ((1/3 + 1/3) / 2, (2/3 + 2/3) / 2, (1 + 0) / 2)
    (0.333333, 0.666667, 0.5)
    """
    if not results:
        raise ValueError("summarize: no prompts")
    n = len(results[0].samples)
    if any(len(r.samples) != n for r in results):
        raise ValueError("summarize: every prompt needs the same number of samples")
    P = len(results)
    correct = [[is_correct(v) for v in r.samples] for r in results]
    every_sample = [v for r in results for v in r.samples]
    return {
        "accuracy": mean_abstain_as_zero([r.greedy for r in results]),
        "format_rate": mean_abstain_as_zero([r.greedy_format for r in results]) if with_format else None,
        "completion_len": sum(r.greedy_tokens for r in results) / P,
        "truncated_frac": sum(r.greedy_truncated for r in results) / P,
        "abstain_frac": sum(r.greedy is None for r in results) / P,
        "pass@1": sum(pass_at_k(n, sum(c), 1) for c in correct) / P,
        f"pass@{k}": sum(pass_at_k(n, sum(c), k) for c in correct) / P,
        f"maj@{k}": sum(maj_at_k(r.answers, c, k) for r, c in zip(results, correct, strict=True)) / P,
        "sample_accuracy": mean_abstain_as_zero(every_sample),
        "sample_format_rate": (
            mean_abstain_as_zero([v for r in results for v in r.sample_format]) if with_format else None
        ),
        "sample_completion_len": sum(t for r in results for t in r.sample_tokens) / len(every_sample),
        "sample_abstain_frac": sum(v is None for v in every_sample) / len(every_sample),
    }


def pick_rules(rules: Sequence[Any], accuracy: str | None, fmt: str | None) -> tuple[list[Any], str, str | None]:
    """The rules to score with and the labels of the accuracy and format rewards (see the module docstring).

    ``accuracy`` / ``fmt`` name a rule's label, or a registered reward the recipe lacks (then added at weight 0);
    ``fmt="none"`` turns the format rate off.

    >>> from rewards.scoring import RewardSpec
    >>> rules = [RewardSpec("math_accuracy"), RewardSpec("r1_format_strict", 0.2)]
    >>> [(len(r), a, f) for r, a, f in (pick_rules(rules, None, None), pick_rules(rules, None, "r1_format_soft"))]
    [(2, 'math_accuracy', 'r1_format_strict'), (3, 'math_accuracy', 'r1_format_soft')]
    >>> pick_rules(rules[:1], None, None)[2] is None
    True
    """
    rules = list(rules)
    acc = _pick("--accuracy-reward", accuracy, rules) if accuracy else rules[0].label
    if fmt == "none":
        return rules, acc, None
    if fmt:
        return rules, acc, _pick("--format-reward", fmt, rules)
    found = [r.label for r in rules if r.label != acc and "format" in r.name.split(":")[-1]]
    return rules, acc, found[0] if found else None


def _pick(arg: str, name: str, rules: list[Any]) -> str:
    """``name``'s label among ``rules``; a registered reward not among them is appended (weight 0)."""
    import rewards  # noqa: F401  (registers the built-in rules)
    from rewards.base import REWARDS
    from rewards.scoring import RewardSpec

    if any(r.label == name for r in rules):
        return name
    if name not in REWARDS:
        raise ConfigError(
            f"{arg}: {name!r} is neither a reward of the recipe ({[r.label for r in rules]}) nor a registered reward "
            "(r1kit rewards lists them); pass one of those"
        )
    rules.append(RewardSpec(name, 0.0))
    return name


# ------------------------------------------------------------------------------------------------ evaluation


def check_counts(*, k: int, n: int | None, limit: int | None) -> int:
    """``n`` (default ``k``) after checking the counts; a bad one is a ``ConfigError`` naming its flag."""
    n = k if n is None else n
    if k < 1:
        raise ConfigError(f"--k: must be >= 1, got {k}")
    if n < k:
        raise ConfigError(
            f"--k: {k} is more than --n={n} samples per prompt; pass --n {k} (or more), or a smaller --k"
        )
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit: must be >= 1 prompt, got {limit}")
    return n


def eval_recipe(model_or_run: str, recipe: str | None):
    """The recipe that gives template, rewards, data and rollout settings: ``recipe`` if given, else the run's
    ``config.yaml``, else every default."""
    from rl.config import load_recipe, looks_like_a_path
    from rl.tools_cli import MODEL_HELP, is_run_dir

    path = Path(model_or_run).expanduser()
    if not model_or_run.startswith("tiny://") and not path.exists() and looks_like_a_path(model_or_run):
        raise ConfigError(f"MODEL_OR_RUN: {model_or_run!r} does not exist; pass {MODEL_HELP}")
    if recipe is not None:
        try:
            return load_recipe(recipe)
        except ConfigError as e:
            raise ConfigError(f"--recipe: {e}") from None
    return load_recipe(path / "config.yaml" if is_run_dir(path) else None)


def eval_prompts(cfg, data: str | None, *, limit: int | None, tokenizer=None, prompt_column: str | None = None):
    """The prompts to evaluate and a description: the recipe's held-out split (``data`` None), a task's held-out
    split (``data`` a task name, e.g. ``arith``), or every usable row of a file / directory / hub dataset in order.
    At most ``limit`` prompts."""
    from rollouts.data import load_prompt_sets
    from rollouts.tasks import TASKS, split_examples, to_prompts

    d = cfg.data
    if data is not None and data in TASKS and not Path(data).exists():
        task = data
    elif data is None:
        task = d.task
        if d.num_eval == 0:
            raise ConfigError("--data: the recipe holds out no prompts (data.num_eval: 0); pass --data FILE or a task")
    else:
        return _file_prompts(cfg, data, limit=limit, tokenizer=tokenizer, prompt_column=prompt_column), data
    if task is not None:
        _, ev = split_examples(task, n_train=0, n_eval=limit or d.num_eval, seed=d.seed)
        return to_prompts(ev, d.template, "eval-"), f"task {task} held out (seed {d.seed})"
    sets = load_prompt_sets(**d.prompt_set_args(), tokenizer=tokenizer)  # d.task is None here
    return sets.eval[:limit], f"{d.path} held out ({d.num_eval} rows)"


def _file_prompts(cfg, path: str, *, limit: int | None, tokenizer, prompt_column: str | None) -> list:
    """Rows of ``path`` in file order through the recipe's adapter (rows without an answer skipped)."""
    from rollouts.adapters import ADAPTERS, chat_messages, prompt_formatter
    from rollouts.data import DataError, open_dataset
    from rollouts.records import Prompt

    d = cfg.data
    same = path == d.path
    try:
        ds = open_dataset(path, subset=d.subset if same else None, split=d.split)
    except DataError as e:
        raise DataError(str(e).replace("data.path:", "--data:", 1)) from e
    adapter = d.adapter if same or d.path is not None else "generic"
    column = prompt_column or d.prompt_column
    adapt, fmt = ADAPTERS.get(adapter), prompt_formatter(d.template, tokenizer)
    prompts = []
    for i in range(len(ds)):
        if limit is not None and len(prompts) == limit:
            break
        try:
            ad = adapt(ds[i], column)
        except ValueError as e:
            raise ConfigError(
                f"--data: {path!r}: {e} (adapter {adapter!r}); name the question column with --prompt-column"
            ) from None
        if ad is not None:
            messages = chat_messages(ad.question) if d.template == "chat" else None
            prompts.append(Prompt(f"row-{i}", fmt(ad.question), ad.columns, messages))
    if not prompts:
        raise ConfigError(f"--data: none of the {len(ds)} rows of {path!r} gave a prompt with an answer")
    return prompts


def evaluate_model(
    model_or_run: str,
    *,
    recipe: str | None = None,
    data: str | None = None,
    k: int = 8,
    n: int | None = None,
    temperature: float | None = None,
    max_new_tokens: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    accuracy_reward: str | None = None,
    format_reward: str | None = None,
    prompt_column: str | None = None,
    progress: bool = False,
    cfg=None,
) -> dict[str, Any]:
    """Evaluate a run directory's final model (its ``config.yaml`` gives template, rewards, held-out data and rollout
    settings) or a model (``recipe``, else the defaults, gives them): the metrics of the module docstring, the
    greedy mean of every reward (``rewards``), the settings used (``settings``) and each prompt's verdicts
    (``per_prompt``: ``PromptResult`` fields, from which every metric can be recomputed). ``temperature`` /
    ``max_new_tokens`` default to the recipe's ``rollout`` values; ``n`` samples per prompt (default ``k``). ``cfg``:
    a ``RecipeConfig`` to use instead of ``recipe`` or the run's own (``r1kit pipeline`` evaluates each stage's model
    with the stage's recipe)."""
    n = check_counts(k=k, n=n, limit=limit)
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens: must be >= 1, got {max_new_tokens}")
    if temperature is not None and not temperature > 0:
        raise ConfigError(
            f"--temperature: must be > 0 for the samples (the greedy pass runs anyway), got {temperature}"
        )
    cfg = cfg or eval_recipe(model_or_run, recipe)
    rules, acc, fmt = pick_rules(cfg.rewards.rules, accuracy_reward, format_reward)
    from rl.tools_cli import load_model

    loaded = load_model(model_or_run, arg="MODEL_OR_RUN") if cfg.data.template == "chat" else None
    prompts, described = eval_prompts(
        cfg, data, limit=limit, tokenizer=loaded and loaded.tokenizer, prompt_column=prompt_column
    )
    from rewards.scoring import RewardScorer, bind_rewards, trainer_state

    columns = sorted({c for p in prompts for c in p.columns})
    scorer = RewardScorer(bind_rewards(rules, columns), max_error_fraction=cfg.rewards.max_error_fraction)
    loaded = loaded or load_model(model_or_run, arg="MODEL_OR_RUN")  # after the cheap checks: a typo answers fast
    r = cfg.rollout
    settings = {
        "model_or_run": str(model_or_run),
        "data": described,
        "prompts": len(prompts),
        "template": cfg.data.template,
        "k": k,
        "n": n,
        "temperature": temperature or r.temperature,
        "top_p": r.top_p,
        "top_k": r.top_k,
        "max_new_tokens": max_new_tokens or r.max_new_tokens,
        "stop": list(r.stop),
        "seed": seed,
        "accuracy_reward": acc,
        "format_reward": fmt,
        "correct_at": CORRECT_AT,
    }
    state = trainer_state(global_step=cfg.training.max_steps, max_steps=cfg.training.max_steps)
    t0 = time.time()
    results, greedy_means = _generate_and_score(loaded, cfg, settings, prompts, scorer, state, progress=progress)
    metrics = summarize(results, k=k, with_format=fmt is not None)
    settings["wall_seconds"] = round(time.time() - t0, 2)
    per_prompt = [asdict(r) for r in results]
    return {**metrics, "rewards": greedy_means, "settings": settings, "per_prompt": per_prompt}


def make_backend(loaded, cfg, *, temperature: float, max_new_tokens: int, seed_requests: bool = False):
    """The recipe's rollout backend over a loaded model (moved to the GPU when there is one): ``r1kit eval`` and
    ``r1kit sample``. ``seed_requests``: vLLM's requests seeded from torch whatever ``rollout.vllm`` says (r1kit's
    own sampler always follows torch's random state)."""
    import torch

    from rollouts.backends import BACKENDS

    r = cfg.rollout
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    common = r.backend_options(temperature=temperature, max_new_tokens=max_new_tokens)
    if r.backend == "vllm":  # the engine starts from a temporary copy of the loaded model (LoRA merged)
        engine = r.vllm.engine_options()
        engine["seed_requests"] = engine["seed_requests"] or seed_requests
        return BACKENDS.get("vllm")(
            loaded.model.to(device), loaded.tokenizer, seed=cfg.training.seed, **common, **engine
        )
    return BACKENDS.get(r.backend)(
        loaded.model.to(device),
        loaded.tokenizer,
        **common,
        sampler=r.sampler,
        fused_decode=r.fused_decode,
        threads=r.torch_threads,
    )


def _generate_and_score(loaded, cfg, s: dict[str, Any], prompts, scorer, state, *, progress: bool):
    """Greedy and sampled completions of ``prompts`` in rounds of ``CHUNK_PROMPTS``, scored; returns the
    ``PromptResult`` list and each reward's greedy mean (abstain = 0)."""
    import torch

    from rollouts.backends import torch_threads

    backend = make_backend(loaded, cfg, temperature=s["temperature"], max_new_tokens=s["max_new_tokens"])
    device = next(backend.model.parameters()).device
    results: list[PromptResult] = []
    sums = dict.fromkeys([b.spec.label for b in scorer.bound], 0.0)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch_threads(cfg.training.torch_threads):
        torch.manual_seed(s["seed"])
        for start in range(0, len(prompts), CHUNK_PROMPTS):
            chunk = prompts[start : start + CHUNK_PROMPTS]
            ids = list(range(start, start + len(chunk)))  # group id = the prompt's index in the evaluation
            greedy = backend.generate(chunk, ids, num_generations=1, greedy=True)
            sampled = backend.generate(chunk, ids, num_generations=s["n"])
            g_scores, s_scores = _score(scorer, greedy, state), _score(scorer, sampled, state)
            for label in sums:
                sums[label] += sum(v or 0.0 for v in g_scores[label].values)
            results += _results(greedy, g_scores, sampled, s_scores, s["accuracy_reward"], s["format_reward"])
            if progress:
                _progress_line(len(results), len(prompts), results)
    return results, {label: v / len(results) for label, v in sums.items()}


def _score(scorer, batch, state):
    return scorer.score(
        batch.reward_prompts,
        batch.reward_completions,
        batch.columns(),
        completion_ids=batch.completion_ids,
        trainer_state=state,
    )


def _results(greedy, g_scores, sampled, s_scores, acc: str, fmt: str | None) -> list[PromptResult]:
    """One ``PromptResult`` per group of ``greedy`` (one completion each), its samples found by group id."""
    from rewards.math.verify import extract_answer

    rows: dict[int, list[int]] = {}
    for i, c in enumerate(sampled.completions):
        rows.setdefault(c.group_id, []).append(i)
    acc_s, fmt_s = s_scores[acc], s_scores[fmt] if fmt else None

    def answer(i: int) -> str | None:
        info = acc_s.info[i]
        return answer_key(info["extracted"] if "extracted" in info else extract_answer(sampled.completions[i].text))

    out = []
    for j, c in enumerate(greedy.completions):
        mine = rows[c.group_id]
        out.append(
            PromptResult(
                prompt_id=c.prompt.prompt_id,
                greedy=g_scores[acc].values[j],
                greedy_format=g_scores[fmt].values[j] if fmt else None,
                greedy_tokens=c.num_tokens,
                greedy_truncated=c.finish_reason == "length",
                samples=tuple(acc_s.values[i] for i in mine),
                answers=tuple(answer(i) for i in mine),
                sample_format=tuple(fmt_s.values[i] for i in mine) if fmt_s else (),
                sample_tokens=tuple(sampled.completions[i].num_tokens for i in mine),
            )
        )
    return out


def _progress_line(done: int, total: int, results: Sequence[PromptResult]) -> None:
    """A plain line per round on stderr (a log file shows it as well as a terminal)."""
    acc = mean_abstain_as_zero([r.greedy for r in results])
    print(f"eval: {done}/{total} prompts, greedy accuracy so far {acc:.3f}", file=sys.stderr, flush=True)
