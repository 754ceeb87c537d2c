"""Loading the policy (any transformers causal LM, MoE families first-class), LoRA, and the reference model."""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.configio import ConfigError
from rl.config import DataConfig, ModelConfig, looks_like_a_path
from rl.zoo.models import parse_tiny_ref
from rl.zoo.pretraining import ensure_tiny_base

log = logging.getLogger(__name__)

# Linear layers LoRA adapts by default: attention projections (incl. DeepSeek MLA's low-rank ones) and dense
# MLPs (incl. shared experts). Routed experts are fused 3-D parameters in transformers >= 5 and are adapted
# only with model.lora_target_experts; routers are never adapted (routing is controlled by the moe options).
DEFAULT_LORA_TARGETS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "q_a_proj",
    "q_b_proj",
    "kv_a_proj_with_mqa",
    "kv_b_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "w1",
    "w2",
    "w3",
    "c_attn",
    "c_proj",
    "fc1",
    "fc2",
)
EXPERT_PARAMETERS = ("gate_up_proj", "down_proj", "up_proj", "gate_proj", "w1", "w2", "w3")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


@dataclass
class Policy:
    model: torch.nn.Module
    tokenizer: object
    reference: torch.nn.Module | None
    """A frozen copy for full fine-tuning with beta > 0; None with LoRA (the base is the reference) or beta = 0."""
    source: str
    """Where the weights came from (the resolved local directory for tiny:// models)."""

    @property
    def is_lora(self) -> bool:
        return hasattr(self.model, "disable_adapter")

    @contextlib.contextmanager
    def as_reference(self) -> Iterator[torch.nn.Module]:
        """The reference model: the base with adapters disabled (LoRA), or the frozen copy (full)."""
        if self.reference is not None:  # in the policy's mode: the KL compares like with like (dropout, jitter)
            yield self.reference.train(self.model.training)
        elif self.is_lora:
            with self.model.disable_adapter():
                yield self.model
        else:
            raise RuntimeError("no reference model: algorithm.beta is 0, so none was loaded")


def resolve_source(cfg: ModelConfig, data: DataConfig) -> str:
    """The local directory or hub id to load: a ``tiny://`` base is built (or found in the cache) first.

    A tiny base's pre-training leaves out the held-out prompts of its synthetic task, so ``data.seed`` and
    ``data.num_eval`` are part of its cache key, but only when the run evaluates on that task: a file dataset's
    held-out set is its own, and changing its size must not rebuild the base.
    """
    name = cfg.name_or_path
    if name.startswith("tiny://"):
        try:
            family, task = parse_tiny_ref(name)
        except (ValueError, KeyError) as e:  # a malformed ref, an unknown family (the registry's KeyError)
            msg = str(e.args[0])
            raise ConfigError(msg if msg.startswith("model.name_or_path") else f"model.name_or_path: {msg}") from None
        same_task = data.task == task
        seed, n_eval = (data.seed, data.num_eval) if same_task else (DataConfig.seed, DataConfig.num_eval)
        return str(ensure_tiny_base(name, eval_seed=seed, n_eval=n_eval, cfg=cfg.tiny))
    p = Path(name).expanduser()
    if not p.is_dir() and (looks_like_a_path(name) or p.is_file()):
        raise ConfigError(
            f"model.name_or_path: {name!r} is not a model directory (relative paths are read from {Path.cwd()}); "
            "fix the path, or give a hub id such as 'Qwen/Qwen3-30B-A3B' or a tiny://family/task base"
        )
    if p.is_dir() and not (p / "config.json").is_file():
        raise ConfigError(
            f"model.name_or_path: {name!r} is a directory without a model (no config.json); point it at a directory "
            "written by save_pretrained, or at a run's merged export (r1kit export RUN --merge OUT)"
        )
    return name


@contextlib.contextmanager
def _loading(source: str, what: str, key: str = "model.name_or_path") -> Iterator[None]:
    """Turn a failed ``from_pretrained`` of a missing hub id or a directory without weights into a message naming
    ``key`` (the recipe key, or a command's argument)."""
    try:
        yield
    except OSError as e:  # transformers raises OSError (incl. its repo-id validation) for what it cannot find
        raise ConfigError(
            f"{key}: loading the {what} from {source!r} failed ({str(e).splitlines()[0][:300]}); "
            "check the directory or hub id (and model.revision)"
        ) from e


def load_pretrained(source: str, cfg: ModelConfig, *, key: str = "model.name_or_path") -> torch.nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` with the recipe's revision, dtype, remote-code and attention
    settings; a failure is a ``ConfigError`` naming ``key``."""
    kwargs = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code, "dtype": DTYPES[cfg.dtype]}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    with _loading(source, "model", key):
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)


def load_tokenizer(source: str, cfg: ModelConfig, *, key: str = "model.name_or_path"):
    with _loading(source, "tokenizer", key):
        tok = AutoTokenizer.from_pretrained(source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(cfg: ModelConfig, data: DataConfig, *, need_reference: bool, device: torch.device) -> Policy:
    source = resolve_source(cfg, data)
    tokenizer = load_tokenizer(source, cfg)
    model = load_pretrained(source, cfg).to(device)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        if cfg.finetune == "lora":
            # The frozen embeddings' output does not require grad; with LoRA nothing before the first adapted
            # layer does, and a checkpointed block whose inputs need no grad may be skipped by backward (reentrant
            # checkpointing drops it). Marking the embedding output keeps every block on the gradient path.
            model.enable_input_require_grads()
    reference = None
    if cfg.finetune == "lora":
        model = apply_lora(model, cfg)
    elif need_reference:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    return Policy(model, tokenizer, reference, source)


def lora_targets(model: torch.nn.Module, cfg: ModelConfig) -> tuple[list[str], list[str]]:
    """(module names, expert parameter names) to adapt, found in ``model``; raises if none match."""
    wanted = set(cfg.lora_target_modules or DEFAULT_LORA_TARGETS)
    modules = sorted(
        {
            n.rsplit(".", 1)[-1]
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".experts." not in n
        }
        & wanted
    )
    if not modules:
        raise ValueError(f"model.lora_target_modules: none of {sorted(wanted)} is a Linear layer of this model")
    params: list[str] = []
    if cfg.lora_target_experts:
        params = sorted(
            {
                f"experts.{n.rsplit('.', 1)[-1]}"
                for n, p in model.named_parameters()
                if ".experts." in n and p.dim() == 3 and n.rsplit(".", 1)[-1] in EXPERT_PARAMETERS
            }
        )
        if not params:
            raise ValueError("model.lora_target_experts: this model has no fused 3-D expert parameters to adapt")
    return modules, params


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence the two warnings peft raises on every r1kit LoRA model, both harmless here:
    - peft's MoE defaults add ``rank_pattern``/``alpha_pattern`` keys for fused expert names that r1kit did not
      target (``lora_target_experts`` off), and peft warns that they matched nothing;
    - peft reads ``model.is_gradient_checkpointing``, which transformers deprecated (a FutureWarning).
    Everything else peft says still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"The following (rank|alpha)_pattern keys did not match", RuntimeWarning)
        warnings.filterwarnings("ignore", r"`is_gradient_checkpointing` is deprecated", FutureWarning)
        yield


def apply_lora(model: torch.nn.Module, cfg: ModelConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    modules, params = lora_targets(model, cfg)
    lcfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=modules,
        target_parameters=params or None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with quiet_peft():
        peft_model = get_peft_model(model, lcfg)
    n_train = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    log.info("LoRA on %s%s: %d trainable parameters", modules, f" + experts {params}" if params else "", n_train)
    return peft_model


def save_final(policy: Policy, out: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Adapter (LoRA) or full weights as safetensors, plus the tokenizer: loadable with transformers/peft.
    ``state_dict``: the full state gathered from FSDP / ZeRO-3 shards (peft keeps only the adapter's part)."""
    kwargs = {} if state_dict is None else {"state_dict": state_dict}
    policy.model.save_pretrained(out, safe_serialization=True, **kwargs)
    policy.tokenizer.save_pretrained(out)
