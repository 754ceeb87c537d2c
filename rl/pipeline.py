"""``r1kit pipeline PIPELINE.yaml``: DeepSeek-R1's training recipe as one resumable run (DeepSeek-R1 paper, 2.3):

    cold-start SFT -> reasoning GRPO -> rejection sampling -> SFT of the base on the samples -> GRPO

and, as the paper's small models were made, distillation: SFT of another (smaller) model on the same samples.

A pipeline file has three sections (``recipes/r1_tiny_pipeline.yaml`` is the worked example):
- ``shared``: recipe sections every stage starts from (``model`` is the base, ``data`` the prompts and held-out set,
  ``rewards``, ``rollout``, ``training``, ...), exactly as in a recipe file;
- ``stages``: each with a ``name``, a ``kind`` (``sft`` = ``r1kit sft``, ``grpo`` = ``r1kit train``, ``sample`` =
  ``r1kit sample``), the model it starts from (``init``), for SFT the sample stage whose rows it trains on
  (``data``), and the recipe keys it changes (``recipe``);
- ``eval``: how every stage's model is measured on the held-out prompts (``r1kit eval``'s metrics).

The run directory holds ``pipeline.yaml`` (the file run), ``pipeline_summary.json`` (rewritten after every stage)
and one subdirectory per stage, ``NN_name/``: an ordinary run directory of its command, plus ``model/`` (the
standalone trained model, LoRA merged, that later stages start from), ``eval.json`` and ``stage.json`` (written
last: the stage is done). ``--resume`` skips finished stages and resumes the interrupted one from its last
checkpoint (GRPO, SFT) or sampled chunk.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from core.configio import ConfigError, check_keys, from_dict, read_yaml_mapping
from core.files import atomic_write_text

log = logging.getLogger(__name__)

STAGE_KINDS = ("sft", "grpo", "sample")


@dataclass(frozen=True)
class StageSpec:
    name: str
    """Names the stage's directory and its row in the summary; later stages refer to it by this name."""
    kind: Literal["sft", "grpo", "sample"]
    """``sft`` (``r1kit sft``), ``grpo`` (``r1kit train``) or ``sample`` (``r1kit sample``)."""
    init: str | None = None
    """The model the stage starts from: an earlier stage's name (its trained model; for a sample stage, the model it
    sampled), or null for the stage's own ``model.name_or_path`` (``shared``'s base unless ``recipe`` names another,
    e.g. a distillation student)."""
    data: str | None = None
    """SFT stages: an earlier sample stage whose ``samples.jsonl`` are the rows (else ``recipe.sft`` gives them)."""
    recipe: dict[str, Any] = field(default_factory=dict)
    """Recipe keys this stage changes, as nested sections merged over ``shared`` (e.g. ``{training: {max_steps:
    40}}``)."""


@dataclass(frozen=True)
class PipelineEval:
    """``r1kit eval`` of every stage's model (and of the base) on the held-out prompts of ``shared.data``."""

    k: int = 4
    """Samples per prompt for pass@k and maj@k (the greedy pass gives accuracy and format rate)."""
    limit: int | None = None
    """Evaluate only the first N held-out prompts; null: all of them."""
    seed: int = 0
    """Seed of the evaluation's samples."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"eval.k: must be >= 1, got {self.k}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"eval.limit: must be >= 1 or null, got {self.limit}")


@dataclass(frozen=True)
class PipelineConfig:
    stages: list[StageSpec]
    """The stages, run in order."""
    shared: dict[str, Any] = field(default_factory=dict)
    """Recipe sections every stage starts from."""
    eval: PipelineEval = field(default_factory=PipelineEval)
    """How each stage's model is measured."""
    output_dir: str | None = None
    """Run directory; null: ``runs/<pipeline file stem>``. ``--output-dir`` overrides it."""

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError("stages: a pipeline needs at least one stage")
        seen: dict[str, str] = {}
        for i, s in enumerate(self.stages):
            where = f"stages[{i}] ({s.name})"
            if s.kind not in STAGE_KINDS:
                raise ConfigError(f"{where}.kind: unknown {s.kind!r}; known: {list(STAGE_KINDS)}")
            if not s.name or "/" in s.name or s.name in seen:
                raise ConfigError(f"{where}.name: must be a unique name without '/', got {s.name!r}")
            if s.init is not None and s.init not in seen:
                raise ConfigError(
                    f"{where}.init: {s.init!r} is not an earlier stage (earlier: {list(seen)}); name one, or set "
                    "init: null and the model in the stage's recipe"
                )
            if s.data is not None and (s.kind != "sft" or seen.get(s.data) != "sample"):
                samplers = [n for n, k in seen.items() if k == "sample"]
                raise ConfigError(
                    f"{where}.data: only an sft stage takes data, and it must name an earlier sample stage "
                    f"(earlier sample stages: {samplers}); got {s.data!r} on a {s.kind} stage"
                )
            seen[s.name] = s.kind


def load_pipeline(path: str | Path) -> PipelineConfig:
    p = Path(path)
    data = read_yaml_mapping(p, "pipeline", "shared, stages, eval")
    check_keys(PipelineConfig, data)
    cfg = from_dict(PipelineConfig, data)
    for i in range(len(cfg.stages)):  # every stage's recipe is valid before the first one runs
        stage_recipe(cfg, i, folder=p.resolve().parent)
    return cfg


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, anything else replaces.

    >>> merged({"training": {"lr": 1.0, "max_steps": 5}, "data": {"task": "arith"}}, {"training": {"lr": 2.0}})
    {'training': {'lr': 2.0, 'max_steps': 5}, 'data': {'task': 'arith'}}
    """
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def stage_recipe(cfg: PipelineConfig, i: int, *, folder: Path, run_dir: Path | None = None):
    """Stage ``i``'s ``RecipeConfig``: ``shared`` + its ``recipe``; with ``run_dir``, its model and rows pointed at
    the outputs of the stages it names (``init``, ``data``)."""
    from rl.config import recipe_from_dict

    s = cfg.stages[i]
    data = merged(cfg.shared, s.recipe)
    if run_dir is not None:
        dirs = {st.name: stage_dir(run_dir, j, st) for j, st in enumerate(cfg.stages)}
        if s.init is not None:
            data.setdefault("model", {})["name_or_path"] = str(model_of(dirs[s.init]))
        if s.data is not None:
            data["sft"] = {**data.get("sft", {}), "dataset": str(dirs[s.data] / "samples.jsonl"), "task": None}
    return recipe_from_dict(data, folder=folder, prefix=f"stages[{i}] ({s.name}).recipe: ")


def stage_dir(run_dir: Path, i: int, stage: StageSpec) -> Path:
    return run_dir / f"{i + 1:02d}_{stage.name}"


def model_of(sdir: Path) -> Path:
    """The model a finished stage hands on: its standalone trained model, or the model a sample stage sampled."""
    pointer = sdir / "sampled_model.txt"
    return Path(pointer.read_text().strip()) if pointer.is_file() else sdir / "model"


# ------------------------------------------------------------------------------------------------------- running
def run_pipeline(
    path: str | Path,
    *,
    output_dir: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or with ``resume`` continue) the pipeline; returns what ``pipeline_summary.json`` holds."""
    cfg = load_pipeline(path)
    folder = Path(path).resolve().parent
    run_dir = Path(output_dir or cfg.output_dir or Path("runs") / Path(path).stem)
    _prepare_run_dir(run_dir, Path(path), resume=resume, overwrite=overwrite, force=force)
    from rl.cli import log_to_run_dir

    log_to_run_dir(run_dir)
    summary: dict[str, Any] = {"pipeline": str(path), "complete": False, "base": None, "stages": []}
    shared = stage_recipe(dataclasses.replace(cfg, stages=[StageSpec("base", "sft")]), 0, folder=folder)
    t0 = time.time()
    base_model = resolved_model(shared)  # a tiny:// base is built (pre-trained) here, once: its time counts
    summary["base"] = {"model": shared.model.name_or_path, **_evaluate(base_model, shared, cfg.eval, run_dir, t0)}
    _say(f"base {shared.model.name_or_path}: {_fmt(summary['base'])}")
    for i, stage in enumerate(cfg.stages):
        sdir = stage_dir(run_dir, i, stage)
        done = sdir / "stage.json"
        if not done.is_file():
            _say(f"stage {i + 1}/{len(cfg.stages)}: {stage.name} ({stage.kind})")
            entry = _run_stage(cfg, i, folder, run_dir, sdir, progress=progress)
            atomic_write_text(done, json.dumps(entry, indent=2) + "\n")
        entry = json.loads(done.read_text())
        summary["stages"].append(entry)
        # The stages' own times (a resumed pipeline counts each finished stage once), not this attempt's.
        stage_seconds = sum(e["wall_seconds"] for e in summary["stages"])
        summary["wall_seconds"] = round(summary["base"]["wall_seconds"] + stage_seconds, 1)
        atomic_write_text(run_dir / "pipeline_summary.json", json.dumps(summary, indent=2) + "\n")
        _say(f"{stage.name}: {_fmt(entry)}")
    summary["complete"] = True
    atomic_write_text(run_dir / "pipeline_summary.json", json.dumps(summary, indent=2) + "\n")
    _print_table(summary)
    return summary


def _prepare_run_dir(run_dir: Path, path: Path, *, resume: bool, overwrite: bool, force: bool) -> None:
    saved = run_dir / "pipeline.yaml"
    if saved.is_file() and not resume and not overwrite:
        raise ConfigError(
            f"--output-dir: {run_dir} already holds a pipeline run; pass --resume to continue it or --overwrite to "
            "start over"
        )
    if overwrite and not resume:
        shutil.rmtree(run_dir, ignore_errors=True)
    text = path.read_text()
    if resume and saved.is_file() and yaml.safe_load(saved.read_text()) != yaml.safe_load(text) and not force:
        raise ConfigError(
            f"--resume: {path} differs from the run's {saved}; resume with the run's own file (r1kit pipeline "
            f"{saved} --output-dir {run_dir} --resume), or pass --force to go on with the new one (finished stages "
            "are kept as they are)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if not saved.is_file() or force:
        atomic_write_text(saved, text)


def resolved_model(cfg) -> str:
    """The local directory (a ``tiny://`` base built first) or hub id of the recipe's model."""
    from rl.modeling import resolve_source

    return resolve_source(cfg.model, cfg.data)


def _run_stage(cfg: PipelineConfig, i: int, folder: Path, run_dir: Path, sdir: Path, *, progress: bool) -> dict:
    stage = cfg.stages[i]
    rcfg = stage_recipe(cfg, i, folder=folder, run_dir=run_dir)
    t0 = time.time()
    entry: dict[str, Any] = {"name": stage.name, "kind": stage.kind, "init": stage.init or rcfg.model.name_or_path}
    entry["dir"] = sdir.name
    if stage.data is not None:  # distillation: the teacher is the model the sample stage sampled
        entry["samples_from"] = next(s.init for s in cfg.stages if s.name == stage.data)
    source = resolved_model(rcfg)  # a tiny:// base is built here, once; every command then reads the directory
    rcfg = dataclasses.replace(rcfg, model=dataclasses.replace(rcfg.model, name_or_path=source))
    rcfg = dataclasses.replace(rcfg, logging=dataclasses.replace(rcfg.logging, progress=progress))
    resume = sdir.exists()
    if stage.kind == "sample":
        from rl.sample_cli import print_summary
        from rl.sampling import sample_model

        out = sample_model(source, rcfg, sdir, resume=resume, progress=progress)
        print_summary(out, sdir)
        atomic_write_text(sdir / "sampled_model.txt", source + "\n")
        entry.update({k: out[k] for k in ("kept", "total", "prompts", "mean_pass_rate") if k in out})
        entry.update({k: out[k] for k in ("always_solved", "never_solved") if k in out})
    else:
        if stage.kind == "grpo":
            from rl.trainer import GRPOTrainer

            run = GRPOTrainer(rcfg, sdir, resume=resume)  # no checkpoint yet: it starts over, dropping old rows
        else:
            from rl.sft import SFTRunner

            run = SFTRunner(rcfg, sdir, resume=resume)
        trained = run.train()
        del run
        gc.collect()
        from rl.tools_cli import export_standalone

        model_dir = export_standalone(sdir, sdir / "model")
        entry.update({k: v for k, v in _evaluate(str(model_dir), rcfg, cfg.eval, sdir).items() if k != "wall_seconds"})
        entry["steps"] = trained.get("steps")
        entry["params"] = _param_count(model_dir)
        entry["model"] = str(model_dir)
    entry["wall_seconds"] = round(time.time() - t0, 1)
    return entry


def _param_count(model_dir: Path) -> int:
    """Parameters of a saved model, read from its safetensors headers (nothing loaded)."""
    import math

    from safetensors import safe_open

    n = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            n += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118  # no __iter__
    return n


def _evaluate(model: str, rcfg, ev: PipelineEval, where: Path, started: float | None = None) -> dict[str, Any]:
    """``r1kit eval`` of ``model`` with the stage's recipe, kept in ``where/eval.json`` (a resumed pipeline does
    not evaluate twice); ``wall_seconds`` is the time since ``started`` (default: now)."""
    cached = where / "eval.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    from rl.evaluation import evaluate_model

    t0 = started or time.time()
    res = evaluate_model(model, cfg=rcfg, k=ev.k, limit=ev.limit, seed=ev.seed)
    keep = ("accuracy", "format_rate", "completion_len", f"pass@{ev.k}", f"maj@{ev.k}")
    out = {**{key: res.get(key) for key in keep}, "wall_seconds": round(time.time() - t0, 1)}
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cached, json.dumps(out, indent=2) + "\n")
    return out


# ------------------------------------------------------------------------------------------------------ reporting
def _say(msg: str) -> None:
    from rl.reporting.progress import console

    console.print(f"[bold]pipeline[/bold] {msg}")


def _fmt(entry: dict[str, Any]) -> str:
    if entry.get("kind") == "sample":
        return f"kept {entry.get('kept')}/{entry.get('total')}, mean pass rate {entry.get('mean_pass_rate', 0):.3f}"
    acc, fmt = entry.get("accuracy"), entry.get("format_rate")
    return f"accuracy {acc:.3f}, format rate {'-' if fmt is None else f'{fmt:.3f}'}"


def table_rows(summary: dict[str, Any]) -> list[list[str]]:
    """The end-of-run table: one row per stage (the base first).

    >>> s = {"base": {"accuracy": 0.1, "format_rate": 0.0, "wall_seconds": 200.0}, "stages": [
    ...     {"name": "cold_start", "kind": "sft", "accuracy": 0.3, "format_rate": 0.95, "wall_seconds": 12.0},
    ...     {"name": "rs", "kind": "sample", "kept": 90, "total": 400, "wall_seconds": 3.0}]}
    >>> for row in table_rows(s):
    ...     print(row)
    ['base', '', '0.100', '0.000', '', '200']
    ['cold_start', 'sft', '0.300', '0.950', '', '12']
    ['rs', 'sample', '', '', '90/400', '3']
    """

    def num(v: Any) -> str:
        return "" if v is None else f"{v:.3f}"

    b = summary["base"]
    seconds = f"{b['wall_seconds']:.0f}" if "wall_seconds" in b else ""  # building a tiny:// base included
    rows = [["base", "", num(b["accuracy"]), num(b.get("format_rate")), "", seconds]]
    for e in summary["stages"]:
        kept = f"{e['kept']}/{e['total']}" if e["kind"] == "sample" else ""
        rows.append(
            [e["name"], e["kind"], num(e.get("accuracy")), num(e.get("format_rate")), kept, f"{e['wall_seconds']:.0f}"]
        )
    return rows


def _print_table(summary: dict[str, Any]) -> None:
    from rich.table import Table

    from rl.reporting.progress import console

    table = Table(title="r1kit pipeline: held-out greedy accuracy and format rate after each stage")
    for col in ("stage", "kind", "accuracy", "format rate", "kept/total", "seconds"):
        table.add_column(col, justify="left" if col in ("stage", "kind") else "right")
    for row in table_rows(summary):
        table.add_row(*row)
    console.print(table)
    console.print(f"total {summary.get('wall_seconds', 0):.0f} s")
