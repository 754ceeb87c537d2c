"""Several processes, one run: batch splitting, metric reduction, and a real 2-process CPU run under
``accelerate launch`` that must equal the 1-process run with the same global batch."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from core.configio import ConfigError
from core.metrics import Max, Mean, Metric, Sum
from rl.config import AlgorithmConfig, TrainingConfig
from rl.distributed import Dist, local_sizes
from rl.metrics import length_metrics, reward_metrics

ROOT = Path(__file__).parents[1]
REWARD = f"{Path(__file__).with_name('rewards_for_tests.py')}:digit_share"


def test_local_sizes_split_the_global_batch():
    a = AlgorithmConfig(num_generations=4, batch_size=32, mini_batch_size=16)
    s = local_sizes(a, TrainingConfig(micro_batch_size=2), 4)
    assert (s.batch, s.mini, s.micro) == (32 // 4, 16 // 4, 2)
    assert local_sizes(a, TrainingConfig(), 1).micro == 16  # one process: the whole mini-batch per forward


@pytest.mark.parametrize(
    "algo, training, world, message",
    [
        # 24 completions / 2 processes = 12 per process: not whole groups of 8
        (
            dict(num_generations=8, batch_size=24),
            {},
            2,
            r"algorithm\.batch_size: 24 completions over 2 processes is 12 per process, not a multiple of "
            r"algorithm\.num_generations=8 .* e\.g\. algorithm\.batch_size=32",
        ),
        (
            dict(num_generations=2, batch_size=12, mini_batch_size=6),
            {},
            4,
            r"algorithm\.batch_size: 12 completions over 4 processes is 3 per process",
        ),
        (
            dict(num_generations=2, batch_size=16, mini_batch_size=4),
            {},
            8,
            r"algorithm\.mini_batch_size: 4 does not split evenly over 8 processes",
        ),
        (
            dict(num_generations=2, batch_size=16),
            dict(micro_batch_size=16),
            2,
            r"training\.micro_batch_size: 16 must divide each process's share of the mini-batch "
            r"\(16 / 2 processes = 8",
        ),
        (
            dict(num_generations=2, batch_size=16, dynamic_sampling=True),
            {},
            2,
            r"algorithm\.dynamic_sampling: not supported with 2 processes yet",
        ),
        (
            dict(num_generations=2, batch_size=16, std_scale="batch"),
            {},
            2,
            r"algorithm\.std_scale: batch would be each process's own reward std under 2 processes",
        ),
    ],
)
def test_local_sizes_errors_name_the_key_and_the_fix(algo, training, world, message):
    with pytest.raises(ConfigError, match=message):
        local_sizes(AlgorithmConfig(**algo), TrainingConfig(**training), world)


class _Exchange:
    """What ``accelerator.gather`` does across N processes, for N threads of one test process."""

    def __init__(self, n: int) -> None:
        self.barrier, self.slots = threading.Barrier(n), [None] * n

    def gather(self, rank: int, t: torch.Tensor) -> torch.Tensor:
        self.slots[rank] = t
        self.barrier.wait()
        out = torch.cat(self.slots)
        self.barrier.wait()  # nobody overwrites a slot before every process has read them all
        return out


class _FakeAccelerator:
    def __init__(self, exchange: _Exchange, rank: int, n: int) -> None:
        self.exchange, self.process_index, self.num_processes = exchange, rank, n
        self.is_main_process, self.device = rank == 0, torch.device("cpu")

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return self.exchange.gather(self.process_index, t)


def _reduce_on_processes(*per_process: dict) -> list[dict]:
    """``Dist.reduce_metrics`` run by len(per_process) processes at once, each on its own metrics."""
    n, exchange, out = len(per_process), _Exchange(len(per_process)), [None] * len(per_process)

    def run(rank: int) -> None:
        out[rank] = Dist(_FakeAccelerator(exchange, rank, n)).reduce_metrics(per_process[rank])

    threads = [threading.Thread(target=run, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return out


def test_metrics_reduce_over_processes_as_declared():
    p0 = {
        "reward": 1.0,
        "reward/acc/errors": Sum(1),
        "tokens_per_s": Sum(10.0),
        "completion_len_max": Max(7),
        "time/step": Max(2.5),
        "kl": Mean(0.25),
    }
    p1 = {
        "reward": 3.0,
        "reward/acc/errors": Sum(3),
        "tokens_per_s": Sum(30.0),
        "completion_len_max": Max(5),
        "time/step": Max(4.0),
        "kl": Mean(0.75),
    }
    r0, r1 = _reduce_on_processes(p0, p1)
    assert (
        r0
        == r1
        == {
            "reward": (1.0 + 3.0) / 2,  # a plain number: the mean (processes hold equal numbers of rows)
            "reward/acc/errors": 1 + 3,  # a count: every process adds its own
            "tokens_per_s": 10.0 + 30.0,  # throughput adds up too
            "completion_len_max": max(7, 5),
            "time/step": max(2.5, 4.0),  # the step takes as long as its slowest process
            "kl": (0.25 + 0.75) / 2,
        }
    )
    assert all(type(v) is float for v in r0.values())  # plain numbers for the log and the trackers


def test_nothing_is_inferred_from_a_metric_name():
    # Today's suffix rules would have summed these and taken the max of the others: declared mean, they average.
    p0 = {"reward/acc/errors": 1.0, "tokens_per_s": Mean(10.0), "time/step": 2.0, "completion_len_max": 7}
    p1 = {"reward/acc/errors": 3.0, "tokens_per_s": Mean(30.0), "time/step": 4.0, "completion_len_max": 5}
    r0, _ = _reduce_on_processes(p0, p1)
    assert r0 == {
        "reward/acc/errors": (1.0 + 3.0) / 2,
        "tokens_per_s": (10.0 + 30.0) / 2,
        "time/step": (2.0 + 4.0) / 2,
        "completion_len_max": (7 + 5) / 2,
    }


def test_one_process_unwraps_declarations_and_keeps_lists():
    dist = Dist(_FakeAccelerator(_Exchange(1), 0, 1))
    out = dist.reduce_metrics({"reward/acc/errors": Sum(2), "time/step": Max(1.5), "moe/expert_load": [[0.5, 0.5]]})
    assert out == {"reward/acc/errors": 2, "time/step": 1.5, "moe/expert_load": [[0.5, 0.5]]}
    assert type(out["reward/acc/errors"]) is int


def test_step_metrics_declare_their_reductions(fake_step):
    batch, scores, _ = fake_step(1)
    reward_B = torch.tensor([math.nan if v is None else v for v in scores.total])
    m = {**reward_metrics(scores, reward_B, torch.tensor(batch.group_ids)), **length_metrics(batch)}
    declared = {k: v.reduce for k, v in m.items() if isinstance(v, Metric)}
    assert declared == {
        "reward/acc/errors": "sum",
        "reward/fmt/errors": "sum",
        "reward_missing": "sum",  # samples without a total (a weighted reward abstained or failed), over processes
        "completion_len_max": "max",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(model_dir: str, out: Path, steps: int) -> list[str]:
    sets = [
        f"model.name_or_path={model_dir}",
        "data.task=arith",
        "data.num_train=64",
        "data.num_eval=4",
        "rollout.max_new_tokens=12",
        "rollout.seeded_groups=true",  # completions independent of the world size
        "algorithm.num_generations=4",
        "algorithm.batch_size=16",  # 4 groups: 2 per process
        f"rewards.rules=[{{name: '{REWARD}'}}]",
        f"training.max_steps={steps}",
        "training.lr=0.01",
        "training.torch_threads=1",
        "training.device=cpu",
        "logging.progress=false",
        "logging.save_every=2",
    ]
    return [
        "-m",
        "rl.cli",
        "train",
        str(ROOT / "recipes" / "r1_zero_tiny.yaml"),
        "--output-dir",
        str(out),
        *[x for s in sets for x in ("--set", s)],
    ]


def _launch(args: list[str], dump: Path, processes: int, config: str | None = None) -> None:
    env = {**os.environ, "R1KIT_DEBUG_DUMP_WEIGHTS": str(dump), "OMP_NUM_THREADS": "1"}
    if processes == 1:
        cmd = [sys.executable, *args]
    elif config:  # the README's form: a shipped accelerate configuration
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(ROOT / "recipes" / "accelerate" / config),
            f"--num_processes={processes}",
            f"--main_process_port={_free_port()}",
            *args,
        ]
    else:
        # `--multi_gpu` is accelerate's torchrun launcher; with training.device=cpu the processes form a gloo
        # group. (`--cpu --num_processes 2` goes through the plain launcher, which starts one process unless
        # mpirun is configured.)
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            f"--num_processes={processes}",
            "--num_machines=1",
            "--mixed_precision=no",
            "--dynamo_backend=no",
            f"--main_process_port={_free_port()}",
            *args,
        ]
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, timeout=300)


def _weights(dump: Path, rank: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(dump / f"weights-rank{rank}.safetensors"))


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process_run(tiny_random_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, weights dump) of the 1-process run every multi-process run is compared with."""
    tmp = tmp_path_factory.mktemp("one-process")
    _launch(_train_args(tiny_random_model_dir("deepseek_v3"), tmp / "run", steps=3), tmp / "dump", processes=1)
    return tmp / "run", tmp / "dump"


@pytest.mark.slow
def test_two_processes_match_one_process(tiny_random_model_dir, tmp_path, one_process_run):
    model_dir = tiny_random_model_dir("deepseek_v3")
    two, resumed = tmp_path / "two", tmp_path / "resumed"
    one, dump_one = one_process_run
    _launch(_train_args(model_dir, two, steps=3), tmp_path / "dump-two", processes=2)

    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    import rollouts  # the rollout file of a step holds both processes' groups, like the 1-process one

    stored, stored_one = rollouts.load(two, steps=1), rollouts.load(one, steps=1)
    assert len(stored) == len(stored_one) == 16
    assert sorted(stored.completion) == sorted(stored_one.completion)
    # DDP keeps the processes identical, bit for bit
    w0, w1 = _weights(tmp_path / "dump-two", 0), _weights(tmp_path / "dump-two", 1)
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    # the same global batch gives the same run: identical completions (seeded groups), the same rewards, and
    # updates equal up to float summation order (Adam turns tiny gradient differences into ~1e-4 of lr x steps)
    m2, m1 = _metrics(two), _metrics(one)
    assert [m["step"] for m in m2] == [1, 2, 3]
    for a, b in zip(m2, m1, strict=True):
        assert a["completion_len"] == b["completion_len"] and a["reward"] == pytest.approx(b["reward"], abs=1e-6)
        assert a["reward_std"] == pytest.approx(b["reward_std"], abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    w_one = _weights(dump_one, 0)
    base_b = {k: v for k, v in w_one.items() if "lora_B" in k}
    assert any(v.abs().max() > 0.01 for v in base_b.values()), "LoRA B starts at 0: training must have moved it"
    diff = max((w0[k] - w_one[k]).abs().max().item() for k in w0)
    assert diff < 1e-3, f"2-process weights differ from 1-process weights by {diff}"

    # resume with 2 processes from the step-2 checkpoint: each process restores its own RNG file, and step 3
    # lands on the uninterrupted run's weights exactly
    ckpt = two / "checkpoints" / "step-000002"
    assert {p.name for p in ckpt.iterdir()} >= {"rng-rank0.pt", "rng-rank1.pt", "trainable.safetensors"}
    shutil.copytree(ckpt, resumed / "checkpoints" / ckpt.name)
    (resumed / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in m2[:2]))
    _launch([*_train_args(model_dir, resumed, steps=3), "--resume"], tmp_path / "dump-resumed", processes=2)
    w_res = _weights(tmp_path / "dump-resumed", 0)
    assert all(torch.equal(w_res[k], w0[k]) for k in w0)
    assert [m["step"] for m in _metrics(resumed)] == [1, 2, 3]


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_shards_evaluates_resumes_and_matches_one_process(
    tiny_random_model_dir, tmp_path, one_process_run
):
    """The README's FSDP2 command on CPU: r1kit shards the model itself (accelerate would run DDP), every process
    decodes in step with the other (rollouts and the periodic evaluation), checkpoints are sharded and resume, and
    the consolidated final adapter loads with peft and matches the 1-process run."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model_dir = tiny_random_model_dir("deepseek_v3")
    run, resumed = tmp_path / "fsdp", tmp_path / "resumed"
    one, dump_one = one_process_run
    extra = ["--set", "logging.eval_every=2"]
    _launch([*_train_args(model_dir, run, steps=3), *extra], tmp_path / "dump", processes=2, config="fsdp2.yaml")

    summary = json.loads((run / "summary.json").read_text())
    assert summary["distributed_type"] == "FSDP" and summary["world_size"] == 2 and summary["steps"] == 3
    assert json.loads((one / "summary.json").read_text())["distributed_type"] == "NO"
    m2, m1 = _metrics(run), _metrics(one)
    assert "eval/accuracy" in m2[1], "the periodic evaluation ran on sharded weights"
    for a, b in zip(m2, m1, strict=True):  # seeded groups: the same completions, rewards and updates
        assert a["completion_len"] == b["completion_len"] and a["reward"] == pytest.approx(b["reward"], abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    # Sharded checkpoint: one shard file per process, each holding part of the weights; no gathered copy.
    ckpt = run / "checkpoints" / "step-000002"
    shards = sorted(p.name for p in (ckpt / "dcp").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"] and not (ckpt / "trainable.safetensors").exists()
    w_fsdp, w_one = _weights(tmp_path / "dump", 0), _weights(dump_one, 0)  # process 0: the gathered weights
    assert w_fsdp.keys() == w_one.keys()
    # Each process's file holds about half of the trainable weights and of AdamW's two moments (3x the weights).
    total = sum(t.numel() * t.element_size() for t in w_fsdp.values())
    sizes = [(ckpt / "dcp" / s).stat().st_size for s in shards]
    assert sum(sizes) > 2.5 * total and all(0.3 * sum(sizes) < n < 0.7 * sum(sizes) for n in sizes), sizes
    assert max((w_fsdp[k] - w_one[k]).abs().max().item() for k in w_one) < 1e-3
    # The consolidated final adapter loads with peft on the base and holds the run's weights.
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(run / "final"))
    saved = load_file(str(run / "final" / "adapter_model.safetensors"))
    assert saved and model.peft_config
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert all(torch.allclose(loaded[n], w_fsdp[n]) for n in loaded if n in w_fsdp) and loaded.keys() & w_fsdp.keys()

    # Resume under FSDP2 from the step-2 checkpoint: step 3 lands on the uninterrupted run's weights.
    shutil.copytree(ckpt, resumed / "checkpoints" / ckpt.name)
    (resumed / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in m2[:2]))
    args = [*_train_args(model_dir, resumed, steps=3), *extra, "--resume"]
    _launch(args, tmp_path / "dump-resumed", processes=2, config="fsdp2.yaml")
    w_res = _weights(tmp_path / "dump-resumed", 0)
    assert all(torch.allclose(w_res[k], w_fsdp[k], atol=1e-6) for k in w_fsdp)
    assert [m["step"] for m in _metrics(resumed)] == [1, 2, 3]


def test_strategies_cpu_cannot_honour_fail_loudly(monkeypatch):
    from rl.distributed import make_accelerator

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match=r"DeepSpeed, which r1kit runs on CUDA GPUs only .*fsdp2\.yaml"):
        make_accelerator(TrainingConfig(device="cpu"))
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match=r"fsdp_version 1: r1kit shards CPU runs with FSDP2 only"):
        make_accelerator(TrainingConfig(device="cpu"))


@pytest.mark.parametrize("name, kind", [("ddp", "MULTI_GPU"), ("fsdp2", "FSDP"), ("zero3", "DEEPSPEED")])
def test_shipped_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ROOT / "recipes" / "accelerate" / f"{name}.yaml"))
    assert cfg.distributed_type.value == kind
    assert cfg.mixed_precision == "no", "precision comes from the recipe (training.mixed_precision)"


def test_deepspeed_refuses_micro_batch_accumulation():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from rl.distributed import Dist

    fake = SimpleNamespace(
        process_index=0,
        num_processes=2,
        is_main_process=True,
        device=torch.device("cpu"),
        distributed_type=DistributedType.DEEPSPEED,
    )
    a = AlgorithmConfig(num_generations=4, batch_size=16)
    with pytest.raises(ConfigError, match=r"training\.micro_batch_size: DeepSpeed .*training\.micro_batch_size=8 "):
        Dist(fake).local_sizes(a, TrainingConfig(micro_batch_size=2))
    assert Dist(fake).local_sizes(a, TrainingConfig()).micro == 8


def test_fp16_on_cpu_is_refused():
    from rl.distributed import make_accelerator

    with pytest.raises(ConfigError, match=r"training\.mixed_precision: fp16 needs a CUDA GPU; on CPU use bf16 or no"):
        make_accelerator(TrainingConfig(device="cpu", mixed_precision="fp16"))
