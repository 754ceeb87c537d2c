"""``r1kit config``, ``rewards``, ``generate`` and ``export``: the small commands around a recipe, a reward and a run.

Each command imports what it needs inside its function: ``r1kit config`` on a recipe with a typo must answer in a
fraction of a second, without loading torch.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.configio import ConfigError

MODEL_HELP = (
    "a run directory (holding config.yaml and final/), a local model directory, a hub id (org/name) or "
    "tiny://family/task"
)


def package_version() -> str:
    """The installed distribution's version, or (a checkout that was never installed) ``pyproject.toml``'s."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("r1kit")
    except PackageNotFoundError:
        pyproject = Path(__file__).parents[1] / "pyproject.toml"
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M) if pyproject.is_file() else None
        return found.group(1) if found else "unknown"


# ----------------------------------------------------------------------------------------------------- config


def _config(args: argparse.Namespace) -> int:
    from rl.config import dump_recipe, load_recipe

    sys.stdout.write(dump_recipe(load_recipe(args.recipe, args.set)))
    return 0


# ---------------------------------------------------------------------------------------------------- rewards


def _first_paragraph(doc: str | None) -> str:
    return " ".join((doc or "").split("\n\n")[0].split())


def _one_line_doc(obj: Any) -> str:
    """The docstring's first paragraph on one line; for a function without one, its module's when that paragraph
    names the function (``math_accuracy``'s module is about it alone)."""
    fn = inspect.unwrap(obj)  # a DetailedReward wraps the function that carries the docstring
    if inspect.getdoc(fn):
        return _first_paragraph(inspect.getdoc(fn))
    module_doc = _first_paragraph(inspect.getdoc(sys.modules.get(getattr(fn, "__module__", ""))))
    return module_doc if f"``{getattr(fn, '__name__', '')}``" in module_doc else ""


def _file_rewards(path: Path, module: Any, registered: set[int]) -> dict[str, Any]:
    from rewards.base import keyword_parameters

    """Plain batch functions defined in the file (taking ``completions``), by their recipe reference."""
    found = {}
    for name, obj in vars(module).items():
        if not inspect.isfunction(obj) or obj.__module__ != module.__name__ or id(obj) in registered:
            continue
        if "completions" in keyword_parameters(obj):  # what r1kit and TRL pass by keyword to every reward
            found[f"{path}:{name}"] = obj
    return found


def _rewards(args: argparse.Namespace) -> int:
    import rewards  # noqa: F401  (registers the built-in rules)
    from rewards.base import REWARDS, load_module, required_columns

    module = None
    if args.load:
        if not args.load.is_file():
            raise ConfigError(f"--load: {str(args.load)!r} does not exist; pass the path of a Python file of rewards")
        module = load_module(str(args.load))  # registers whatever the file decorates with @register_reward
    listed = {name: REWARDS.get(name) for name in REWARDS.names()}
    if module is not None:
        listed |= _file_rewards(args.load, module, {id(fn) for fn in listed.values()})
    rows = [{"name": n, "doc": _one_line_doc(fn), "columns": required_columns(fn)} for n, fn in listed.items()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{len(rows)} rewards (use a name in rewards.rules; columns: dataset columns it reads)")
    for col in ("name", "columns", "doc"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(Text(r["name"]), Text(", ".join(r["columns"]) or "-"), Text(r["doc"]))
    # Piped output is never cut: a width no line reaches instead of rich's 80-column default.
    Console(width=None if sys.stdout.isatty() else 100_000).print(table)
    return 0


# -------------------------------------------------------------------------------------------- loading models


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    template: str
    """The run's ``data.template`` (``qa`` for a plain model, as the tiny recipe)."""
    max_new_tokens: int
    """The run's ``rollout.max_new_tokens`` (the rollout default for a plain model)."""
    lora_base: str | None
    """The adapter's ``base_model_name_or_path`` when ``model`` is a peft LoRA model, else None."""
    stop: tuple[str, ...] = ()
    """The run's ``rollout.stop`` (none for a plain model): ``r1kit generate`` ends completions as the run did."""


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.yaml").is_file()


def _lora_base(final: Path, cfg) -> str:
    """The adapter's base; a ``tiny://`` base missing from the r1kit cache is rebuilt from the run's recipe."""
    from rl.modeling import resolve_source

    base = json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
    if Path(base).is_absolute() and not Path(base).exists():
        if not cfg.model.name_or_path.startswith("tiny://"):
            raise ConfigError(f"{final}/adapter_config.json: its base model {base!r} no longer exists")
        print(f"base {base} is not in the r1kit cache: rebuilding {cfg.model.name_or_path}", file=sys.stderr)
        base = resolve_source(cfg.model, cfg.data)
    return base


def _load_checkpoint_weights(run: Path, cfg):
    """A run without ``final/`` yet: the recipe's model with the latest checkpoint's trainable weights."""
    import torch
    from safetensors.torch import load_file

    from rl.checkpoint import latest_checkpoint
    from rl.modeling import load_policy

    ckpt = latest_checkpoint(run / "checkpoints")
    if ckpt is None:
        raise ConfigError(f"{run}: the run has no final weights yet (no final/, no checkpoints/step-*)")
    print(f"{run} has no final/ yet: using {ckpt.relative_to(run)}", file=sys.stderr)
    policy = load_policy(cfg.model, cfg.data, need_reference=False, device=torch.device("cpu"))
    params = dict(policy.model.named_parameters())
    weights = load_file(str(ckpt / "trainable.safetensors"))
    unknown = [n for n in weights if n not in params]
    if unknown:
        raise ConfigError(f"{ckpt}: does not match the run's model (unknown parameters {unknown[:3]})")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t.to(params[n].dtype))
    return policy.model, policy.tokenizer


def load_run(run: Path) -> LoadedModel:
    """The run's final model: base + LoRA adapter or full weights from ``final/`` (else the latest checkpoint)."""
    final, lora_base = run / "final", None
    if not any((final / f).is_file() for f in ("adapter_config.json", "config.json")):
        if not list((run / "checkpoints").glob("step-*")):
            raise ConfigError(f"{run}: the run has no final weights yet (no final/, no checkpoints/step-*)")
    from rl.config import load_recipe
    from rl.modeling import load_pretrained, load_tokenizer, quiet_peft

    cfg = load_recipe(run / "config.yaml")
    if (final / "adapter_config.json").is_file():
        from peft import PeftModel

        lora_base = _lora_base(final, cfg)
        base = load_pretrained(lora_base, cfg.model, key="base model")
        with quiet_peft():
            model = PeftModel.from_pretrained(base, final)
        tokenizer = load_tokenizer(str(final), cfg.model)
    elif (final / "config.json").is_file():
        model, tokenizer = load_pretrained(str(final), cfg.model, key="RUN"), load_tokenizer(str(final), cfg.model)
    else:
        model, tokenizer = _load_checkpoint_weights(run, cfg)
        lora_base = getattr(getattr(model, "peft_config", {}).get("default"), "base_model_name_or_path", None)
    stop = tuple(cfg.rollout.stop)
    return LoadedModel(model.eval(), tokenizer, cfg.data.template, cfg.rollout.max_new_tokens, lora_base, stop)


def load_model(ref: str, *, arg: str) -> LoadedModel:
    """A run directory, a local model directory, ``tiny://family/task`` or a hub id (see ``MODEL_HELP``)."""
    from rl.config import looks_like_a_path

    path = Path(ref).expanduser()
    if is_run_dir(path):
        return load_run(path)
    if not ref.startswith("tiny://") and path.exists() and not (path / "config.json").is_file():
        raise ConfigError(f"{arg}: {ref!r} is neither a run directory (config.yaml) nor a model (config.json)")
    if not ref.startswith("tiny://") and not path.exists() and looks_like_a_path(ref):
        raise ConfigError(f"{arg}: {ref!r} does not exist; pass {MODEL_HELP}")
    from rl.config import DataConfig, ModelConfig, RolloutConfig  # after the checks: a typo answers without torch
    from rl.modeling import load_pretrained, load_tokenizer, resolve_source

    if ref.startswith("tiny://"):
        try:
            source = resolve_source(ModelConfig(name_or_path=ref), DataConfig())
        except ConfigError as e:  # it names the recipe key; here the value came from an argument
            raise ConfigError(f"{arg}: {str(e).removeprefix('model.name_or_path: ')}") from None
    elif path.exists():
        source = str(path)
    else:
        source = ref  # a hub id
    mcfg = ModelConfig(name_or_path=source)
    model = load_pretrained(source, mcfg, key=arg)
    tokenizer = load_tokenizer(source, mcfg, key=arg)
    return LoadedModel(model.eval(), tokenizer, DataConfig().template, RolloutConfig().max_new_tokens, None)


# --------------------------------------------------------------------------------------------------- generate


def _generate(args: argparse.Namespace) -> int:
    if args.max_new_tokens is not None and args.max_new_tokens <= 0:
        raise ConfigError(f"--max-new-tokens: must be > 0, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise ConfigError(f"--temperature: must be >= 0 (0 is greedy), got {args.temperature}")
    if args.n < 1:
        raise ConfigError(f"-n: must be >= 1, got {args.n}")
    loaded = load_model(args.model, arg="MODEL_OR_RUN")
    import torch

    from rollouts.adapters import prompt_formatter
    from rollouts.backends import TransformersBackend
    from rollouts.records import Prompt

    template = args.template or loaded.template
    if args.raw:
        text = args.prompt
    else:
        try:
            text = prompt_formatter(template, loaded.tokenizer)(args.prompt)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"--template: {e.args[0] if isinstance(e, KeyError) else e}") from None
    print(f"prompt ({'raw' if args.raw else template}): {text!r}", file=sys.stderr)
    torch.manual_seed(args.seed)
    greedy = args.temperature == 0
    backend = TransformersBackend(
        loaded.model,
        loaded.tokenizer,
        max_new_tokens=args.max_new_tokens or loaded.max_new_tokens,
        temperature=1.0 if greedy else args.temperature,
        stop=loaded.stop,
    )
    batch = backend.generate([Prompt("cli", text)], [0], num_generations=args.n, greedy=greedy)
    from rollouts.view import printable  # model output never drives the terminal (escape sequences shown escaped)

    for i, c in enumerate(batch.completions, 1):
        if args.n > 1:
            print(f"--- completion {i}/{args.n} ({c.finish_reason}, {c.num_tokens} tokens) ---")
        print(printable(c.text))
    return 0


# ----------------------------------------------------------------------------------------------------- export


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def _recipe_finetune(run: Path) -> str:
    from rl.config import load_recipe

    return load_recipe(run / "config.yaml").model.finetune


def _export(args: argparse.Namespace) -> int:
    run, out = args.run.resolve(), args.out.resolve()
    if not is_run_dir(run):
        raise ConfigError(f"RUN: {str(args.run)!r} is not an r1kit run directory (it has no config.yaml)")
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not args.overwrite:
        raise ConfigError(f"OUT: {str(args.out)!r} exists and is not empty; pass --overwrite to replace it")
    if _overlaps(out, run / "final") or _overlaps(out, run / "checkpoints") or out in run.parents or out == run:
        raise ConfigError(f"OUT: {str(args.out)!r} would overwrite the run itself; choose another directory")
    adapter_config = run / "final" / "adapter_config.json"
    if not args.merge and (adapter_config.is_file() or _recipe_finetune(run) == "lora"):
        base = json.loads(adapter_config.read_text())["base_model_name_or_path"] if adapter_config.is_file() else None
        local = ", a local directory other machines do not have" if base and Path(base).is_absolute() else ""
        raise ConfigError(
            f"--merge: {args.run} is a LoRA run: its weights are an adapter on a base model (adapter_config.json "
            f"base_model_name_or_path: {base!r}{local}); pass --merge to write one standalone model with the adapter "
            "merged into the base weights"
        )
    export_standalone(run, out, arg=str(args.out))
    print(out)
    return 0


def export_standalone(run: Path, out: Path, *, arg: str = "OUT") -> Path:
    """Write the run's final model to ``out`` as one standalone transformers model (a LoRA adapter merged into its
    base), with the tokenizer; ``r1kit export --merge`` and each stage of ``r1kit pipeline``."""
    loaded = load_run(run)
    if loaded.lora_base is not None:
        if Path(loaded.lora_base).exists() and _overlaps(out, Path(loaded.lora_base).resolve()):
            raise ConfigError(f"OUT: {arg!r} would overwrite the run's base model; choose another directory")
        model = loaded.model.merge_and_unload()
    else:
        model = loaded.model  # full fine-tuning: the weights are already standalone
    # Written into a sibling and renamed into place: a failed export leaves OUT as it was.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------------- parsers


def add_commands(sub: argparse._SubParsersAction) -> None:
    co = sub.add_parser(
        "config",
        help="print a recipe fully resolved (every section with its defaults) as YAML",
        description="Print what `r1kit train RECIPE` would run: the same text it writes to RUN/config.yaml.",
    )
    co.add_argument("recipe", nargs="?", help="recipe YAML (default: none, i.e. every default)")
    co.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, as with r1kit train (repeatable)",
    )
    co.set_defaults(func=_config)

    rw = sub.add_parser("rewards", help="list the registered rewards with their doc and the dataset columns they need")
    rw.add_argument("--json", action="store_true", help="print a JSON list of {name, doc, columns}")
    rw.add_argument(
        "--load",
        type=Path,
        metavar="FILE.py",
        help="import your reward file first: list what it registers and its batch functions",
    )
    rw.set_defaults(func=_rewards)

    ge = sub.add_parser(
        "generate",
        help="print what a model or a run's final model writes for a prompt",
        description="Greedy by default. The prompt is formatted with the run's data.template (qa for a plain "
        "model) unless --raw.",
    )
    ge.add_argument("model", metavar="MODEL_OR_RUN", help=MODEL_HELP)
    ge.add_argument("prompt", help="the question (formatted with the template) or, with --raw, the exact text")
    ge.add_argument("--max-new-tokens", type=int, help="default: the run's rollout.max_new_tokens (else 64)")
    ge.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
    ge.add_argument("-n", type=int, default=1, metavar="K", help="completions to sample (default 1)")
    ge.add_argument("--seed", type=int, default=0, help="torch seed for sampling (default 0)")
    ge.add_argument("--template", help="qa, r1 or chat (default: the run's data.template, else qa)")
    ge.add_argument("--raw", action="store_true", help="pass the prompt to the model as is")
    ge.set_defaults(func=_generate)

    ex = sub.add_parser(
        "export",
        help="write a run's final model as one standalone transformers model directory",
        description="LoRA runs need --merge: the adapter is merged into the base and saved as full weights. The "
        "output loads with transformers.AutoModelForCausalLM.from_pretrained(OUT), without peft or r1kit.",
    )
    ex.add_argument("run", metavar="RUN", type=Path, help="run directory (holding config.yaml and final/)")
    ex.add_argument("out", metavar="OUT", type=Path, help="output directory (must be empty or absent)")
    ex.add_argument("--merge", action="store_true", help="merge a LoRA adapter into the base weights")
    ex.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    ex.set_defaults(func=_export)
