"""Pre-training a tiny model on a synthetic task's demonstrations (a few minutes on CPU), and the cache of the
bases that ``tiny://<family>/<task>`` refs name.

A recipe names one as ``model.name_or_path: tiny://<family>/<task>`` (e.g. ``tiny://deepseek_v3/arith``); it is
built on first use and cached under ``$R1KIT_CACHE`` (default ``~/.cache/r1kit``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from core.files import current_umask
from rl.config import PretrainConfig
from rl.zoo.models import build_char_tokenizer, parse_tiny_ref, tiny_model
from rollouts.tasks import DEMOS, TEMPLATES, split_examples

log = logging.getLogger(__name__)


def demo_texts(task: str, cfg: PretrainConfig, *, eval_seed: int, n_eval: int) -> list[tuple[str, str]]:
    """(prompt, completion) pairs for pre-training; excludes the eval questions of ``eval_seed``."""
    demo = DEMOS.get(task)
    train, _ = split_examples(task, n_train=cfg.n_demos, n_eval=n_eval, seed=eval_seed)
    rng = random.Random(cfg.seed)
    tpl = TEMPLATES.get(cfg.template)
    write = (lambda ex, a: ex.completion(a)) if cfg.style == "r1" else (lambda ex, a: ex.plain_completion(a))
    return [
        (tpl.format(question=d.example.question), write(d.example, d.shown_answer))
        for d in (demo(ex, rng, cfg.mistake_rate) for ex in train)
    ]


def _lm_batch(tokenizer, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels (loss on completion tokens + EOS only)."""
    rows = [(tokenizer.encode(p), tokenizer.encode(c) + [tokenizer.eos_token_id]) for p, c in pairs]
    L = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), L), tokenizer.pad_token_id)
    labels = torch.full((len(rows), L), -100)
    for i, (p, c) in enumerate(rows):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        labels[i, len(p) : len(p) + len(c)] = torch.tensor(c)
    return ids, (ids != tokenizer.pad_token_id).long() | (labels != -100).long(), labels


def pretrain(
    model, tokenizer, pairs: list[tuple[str, str]], cfg: PretrainConfig, progress: bool = True
) -> list[float]:
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * min(s / cfg.steps, 1.0)))
    )
    rng = random.Random(cfg.seed)
    model.train()
    losses = []
    # In a log file (CI, nohup) redraw rarely: a bar per step would bury the rest of the output.
    redraw_s = 0.1 if sys.stderr.isatty() else 30
    bar = tqdm(range(cfg.steps), desc="pre-training tiny base", disable=not progress, mininterval=redraw_s)
    for _ in bar:
        ids, attn, labels = _lm_batch(tokenizer, rng.sample(pairs, cfg.batch_size))
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", refresh=False)  # drawn at mininterval
    model.eval()
    return losses


def cache_root() -> Path:
    return Path(os.environ.get("R1KIT_CACHE", Path.home() / ".cache" / "r1kit"))


def ensure_tiny_base(ref: str, *, eval_seed: int, n_eval: int, cfg: PretrainConfig | None = None) -> Path:
    """Return the cached directory of ``tiny://family/task``, building and pre-training it first if needed.

    The cache key covers everything that shapes the weights; the directory appears atomically (built in a
    temporary sibling, then renamed), so a killed build leaves no half-written model behind.
    """
    family, task = parse_tiny_ref(ref)
    cfg = cfg or PretrainConfig()
    settings = asdict(cfg)
    if settings["style"] == "r1":  # the key as before the field existed: bases already cached stay valid
        del settings["style"]
    key = json.dumps({"family": family, "task": task, "eval_seed": eval_seed, "n_eval": n_eval, **settings})
    out = cache_root() / "tiny" / f"{family}-{task}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (out / "r1kit_tiny.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tokenizer = build_char_tokenizer()
    model = tiny_model(family, tokenizer, seed=cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("building %s: %.2fM parameters, pre-training %d steps", ref, n_params / 1e6, cfg.steps)
    losses = pretrain(model, tokenizer, demo_texts(task, cfg, eval_seed=eval_seed, n_eval=n_eval), cfg)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it 0700; runs' adapters point here, others read it too
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    meta = {
        "ref": ref,
        "params": n_params,
        "final_loss": losses[-1],
        "seconds": time.time() - t0,
        "key": json.loads(key),
    }
    (tmp / "r1kit_tiny.json").write_text(json.dumps(meta, indent=2))
    try:
        tmp.rename(out)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out
