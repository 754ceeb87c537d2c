"""``r1kit sft`` (rl.sft) on tiny random models: the completion-only loss by hand, resume equivalence, kill -9, the
row sources and their errors, and a student whose tokenizer splits the R1 tags into characters."""

from __future__ import annotations

import json
import signal
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.configio import ConfigError
from rl.cli import main
from rl.config import load_recipe
from rl.sft import SFTRunner, complete_checkpoints, load_rows

REPO = Path(__file__).parents[1]
REWARD = f"{Path(__file__).with_name('rewards_for_tests.py')}:digit_share"  # no math worker pool to start
# One thread each: on a loaded 2-core machine two torch threads per process spin against other jobs (measured:
# a 64x128 linear took 23 ms with two threads, 0.1 ms with one).
BASE = [
    "data.task=arith",
    "data.template=qa",
    "data.num_train=8",
    "data.num_eval=4",
    "rollout.max_new_tokens=12",
    "rollout.torch_threads=1",
    f"rewards.rules=[{{name: '{REWARD}'}}]",
    "sft.num_rows=6",
    "sft.batch_size=4",
    "training.micro_batch_size=2",  # two micro-batches per step: gradient accumulation is exercised
    "training.lr=0.01",
    "training.max_steps=4",
    "training.torch_threads=1",
    "logging.progress=false",
    "logging.save_every=2",
]


def _sets(model_dir: str, *extra: str) -> list[str]:
    """The fast recipe's overrides; rows from ``sft.task=arith`` unless ``extra`` names an ``sft.dataset``."""
    rows = [] if any(e.startswith("sft.dataset=") for e in extra) else ["sft.task=arith"]
    return [f"model.name_or_path={model_dir}", *BASE, *rows, *extra]


def _cfg(model_dir: str, *extra: str):
    return load_recipe(None, _sets(model_dir, *extra))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------------ 1. the loss by hand


def test_loss_is_mean_nll_of_completion_and_eos_tokens_only(tiny_random_model_dir, tmp_path):
    runner = SFTRunner(_cfg(tiny_random_model_dir("deepseek_v3"), "model.finetune=full"), tmp_path)
    trainer, model, tok = runner.trainer, runner.policy.model, runner.policy.tokenizer
    model.eval()  # no dropout: the two forwards below must see the same function
    batch = {k: v.to(trainer.args.device) for k, v in next(iter(trainer.get_train_dataloader())).items()}
    labels_BL = batch["labels"]
    by_ids = {tuple(tok(r["prompt"] + r["completion"] + tok.eos_token).input_ids): r for r in runner.rows}

    # Hand-computed: the model's own logits (the unpatched forward), -log p of every completion token and the EOS.
    nll_sum, n_tokens = 0.0, 0
    for i in range(labels_BL.shape[0]):
        ids = batch["input_ids"][i, batch["attention_mask"][i].bool()].tolist()
        row = by_ids[tuple(ids)]  # the batch row is one of our rows, EOS appended by TRL
        P, L = len(tok(row["prompt"]).input_ids), len(ids)
        assert L == P + len(tok(row["completion"]).input_ids) + 1 and ids[-1] == tok.eos_token_id
        assert (labels_BL[i, :P] == -100).all() and labels_BL[i, P:L].tolist() == ids[P:]
        assert (labels_BL[i, L:] == -100).all()  # padding
        with torch.no_grad():
            logp_TV = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        nll_sum += -sum(logp_TV[t - 1, ids[t]].item() for t in range(P, L))  # position t-1 predicts token t
        n_tokens += L - P
    expected = nll_sum / n_tokens
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch)).item()
    assert loss == pytest.approx(expected, rel=1e-5)

    # Perturb the final hidden states (hence the logits) at every position whose next token is a prompt token or
    # padding: the loss must not move. The same perturbation at one completion position must move it.
    masked_BL = torch.cat([labels_BL[:, 1:] == -100, torch.ones_like(labels_BL[:, :1], dtype=torch.bool)], 1)

    def loss_with_noise(where_BL: torch.Tensor) -> float:
        noise = 50 * torch.randn(*where_BL.shape, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
        hook = model.model.norm.register_forward_hook(lambda m, a, out: out + noise * where_BL[..., None])
        try:
            with torch.no_grad():
                return trainer.compute_loss(model, dict(batch)).item()
        finally:
            hook.remove()

    assert masked_BL.sum() > labels_BL.shape[0]  # the prompts really are there
    assert loss_with_noise(masked_BL) == pytest.approx(loss, rel=1e-6)
    one_completion_BL = torch.zeros_like(masked_BL)
    one_completion_BL[0, (~masked_BL[0]).nonzero()[0, 0]] = True
    assert abs(loss_with_noise(one_completion_BL) - loss) > 1e-3


# --------------------------------------------------------------------------------------- 2. resume equivalence


def test_resume_equals_the_straight_run(tiny_random_model_dir, tmp_path):
    from safetensors.torch import load_file

    model_dir = tiny_random_model_dir("deepseek_v3")
    # Full fine-tuning of an MoE: the expert weights must come back on resume (HF's own loading drops them).
    # 6 rows in steps of 4: the resumed half starts on an epoch boundary with a short last step.
    extra = ("model.finetune=full", "sft.eval_every=2")
    straight = SFTRunner(_cfg(model_dir, *extra), tmp_path / "straight").train()
    SFTRunner(_cfg(model_dir, *extra, "training.max_steps=2"), tmp_path / "halves").train()
    resumed = SFTRunner(_cfg(model_dir, *extra), tmp_path / "halves", resume=True).train()

    a, b = (load_file(tmp_path / d / "final" / "model.safetensors") for d in ("straight", "halves"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    rows_a, rows_b = (_rows(tmp_path / d / "metrics.jsonl") for d in ("straight", "halves"))
    assert [r["step"] for r in rows_a] == [1, 2, 3, 4]
    assert rows_a == rows_b
    assert {"loss", "lr", "grad_norm", "eval/accuracy", "eval/completion_len"} <= rows_a[1].keys()
    assert "eval/accuracy" not in rows_a[0]  # eval_every=2
    assert resumed["base_accuracy"] == straight["base_accuracy"]  # kept in the checkpoint, not re-measured
    assert resumed["final_accuracy"] == straight["final_accuracy"] and resumed["steps"] == 4


# -------------------------------------------------------------------------------------------------- 3. kill -9


def test_kill_9_loses_only_the_steps_after_the_last_complete_checkpoint(tiny_random_model_dir, tmp_path, capfd):
    run = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("sft:\n  task: arith\n")
    sets = _sets(tiny_random_model_dir("qwen3_moe"), "training.max_steps=12", "logging.save_every=3")
    argv = [str(recipe), "--output-dir", str(run), *(a for s in sets for a in ("--set", s))]
    proc = subprocess.Popen([sys.executable, "-m", "rl.cli", "sft", *argv], cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            logged = [r["step"] for r in _rows(run / "metrics.jsonl")] if (run / "metrics.jsonl").exists() else []
            saved = [s for s, _, _ in complete_checkpoints(run / "checkpoints", delete_incomplete=False)]
            if saved and logged and logged[-1] > saved[-1]:
                break
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = _rows(run / "metrics.jsonl")
    last_complete = complete_checkpoints(run / "checkpoints", delete_incomplete=False)[-1][0]
    assert before[-1]["step"] > last_complete >= 3, "the kill must land after a checkpoint, mid-training"
    # A checkpoint cut short by the kill (no trainer_state.json, HF's last write): resume must delete it.
    half = run / "checkpoints" / f"checkpoint-{before[-1]['step']}"
    half.mkdir(exist_ok=True)
    (half / "adapter_model.safetensors").write_bytes(b"partial")

    assert main(["sft", *argv, "--resume"]) == 0
    assert f"checkpoint-{last_complete} (step {last_complete})" in capfd.readouterr().err
    after = _rows(run / "metrics.jsonl")
    assert [r["step"] for r in after] == list(range(1, 13))
    assert after[:last_complete] == before[:last_complete]  # kept, not re-run
    lost = before[last_complete:]  # re-run from the checkpoint: the same numbers (data order, RNG, weights)
    assert lost and after[last_complete : len(before)] == lost
    assert not half.exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["kind"] == "sft"


# ------------------------------------------------------------------------------------------------ 4. row sources


def test_rows_from_jsonl_columns_templates_and_their_errors(tmp_path, capsys):
    pc = [
        {"prompt": f"Q: {a}+1\nA:", "completion": f"<think>{a}+1={a + 1}</think><answer>{a + 1}</answer>"}
        for a in (1, 2, 3)
    ]
    path = _write_jsonl(tmp_path / "pc.jsonl", pc)
    assert load_rows(load_recipe(None, [f"sft.dataset={path}"])) == pc  # verbatim, TRL appends the EOS
    assert load_rows(load_recipe(None, [f"sft.dataset={path}", "sft.num_rows=2"])) == pc[:2]

    raw = _write_jsonl(tmp_path / "raw.jsonl", [{"q": "2+3", "trace": "2+3=5", "final": "5", "n": 1}])
    cfg = load_recipe(
        None,
        [
            f"sft.dataset={raw}",
            "data.template=qa",
            "sft.question_column=q",
            "sft.completion_template='<think>{trace}</think><answer>{final}</answer>'",
        ],
    )
    assert load_rows(cfg) == [{"prompt": "Q: 2+3\nA:", "completion": "<think>2+3=5</think><answer>5</answer>"}]

    bad = load_recipe(None, [f"sft.dataset={raw}", "sft.question_column=q", "sft.completion_template='{answer}'"])
    with pytest.raises(ConfigError, match=r"sft\.completion_template: .*no column 'answer'.*'final', 'n', 'q'"):
        load_rows(bad)
    nulls = _write_jsonl(tmp_path / "nulls.jsonl", [{"prompt": "x", "completion": None}])
    with pytest.raises(ConfigError, match="sft.dataset: .* gave no rows"):
        load_rows(load_recipe(None, [f"sft.dataset={nulls}"]))

    # Through the CLI: exit code 2, the key and the columns named, before any model loads.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"sft:\n  dataset: {path}\n  completion_column: answer_text\n")
    assert main(["sft", str(recipe), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "sft.completion_column" in err and "'answer_text'" in err and "['completion', 'prompt']" in err


def test_task_rows_leave_out_the_held_out_prompts_and_show_mistakes():
    from rollouts.data import load_prompt_sets

    task = ["data.task=arith", "data.template=qa", "sft.task=arith"]
    cfg = load_recipe(None, [*task, "data.num_eval=64", "sft.num_rows=300"])
    cfg_wrong = load_recipe(None, [*task, "sft.num_rows=50", "sft.mistake_rate=1"])
    rows = load_rows(cfg)
    held_out = {p.text for p in load_prompt_sets(**cfg.data.prompt_set_args()).eval}
    assert len(rows) == 300 and not held_out & {r["prompt"] for r in rows}
    assert all(r["completion"].startswith("<think>") and r["completion"].endswith("</answer>") for r in rows)

    def answer(r: dict) -> str:
        return r["completion"].split("<answer>")[1].removesuffix("</answer>")

    def total(r: dict) -> str:
        return str(sum(map(int, r["prompt"].removeprefix("Q: ").removesuffix("\nA:").split("+"))))

    def forgot_last_term(r: dict) -> str:  # rollouts.tasks.arith_demo's mistake: the sum before the last step
        return r["completion"].split("</think>")[0].split(" ")[-1].split("+")[0]

    assert all(answer(r) == total(r) for r in rows)
    assert all(answer(r) == forgot_last_term(r) for r in load_rows(cfg_wrong))


# ----------------------------------------------------------------------------- 5. a student with its own tokenizer


def _char_tokenizer_without_tags():
    """Characters only: ``<think>`` is 7 tokens (the fixture's tokenizer has the tags as single tokens)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<unk>", *dict.fromkeys(string.printable)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def test_student_with_another_tokenizer_trains_on_the_same_text_rows(tiny_random_model_dir, tmp_path):
    from rl.zoo.models import tiny_model

    student_tok = _char_tokenizer_without_tags()
    assert len(student_tok("<think>").input_ids) == 7
    assert student_tok("1<eos>").input_ids[-1] == student_tok.eos_token_id  # TRL appends the EOS as text
    student_dir = tmp_path / "student"
    tiny_model("qwen3_moe", student_tok, seed=0).save_pretrained(student_dir)
    student_tok.save_pretrained(student_dir)
    rows = [{"prompt": "Q: 1+2+3\nA:", "completion": "<think>1+2=3 3+3=6</think><answer>6</answer>"}] * 2
    data = _write_jsonl(tmp_path / "rows.jsonl", rows)

    sets = ("model.finetune=full", f"sft.dataset={data}", "sft.batch_size=2", "training.max_steps=6")
    runner = SFTRunner(_cfg(str(student_dir), *sets), tmp_path / "run")
    labels = runner.trainer.train_dataset[0]["labels"]
    assert sum(t != -100 for t in labels) == len(student_tok(rows[0]["completion"]).input_ids) + 1  # + EOS
    summary = runner.train()

    losses = [r["loss"] for r in _rows(tmp_path / "run" / "metrics.jsonl")]
    assert len(losses) == 6 and losses[-1] < 0.75 * losses[0], losses  # it learns the rows through its own tokens
    assert summary["rows"] == 2 and summary["epochs"] == pytest.approx(6.0) and summary["finetune"] == "full"
    assert summary["trainer"].startswith("trl.SFTTrainer ")
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {"base_accuracy", "final_accuracy", "base_completion_len", "final_completion_len"} <= on_disk.keys()
    assert (tmp_path / "run" / "final" / "config.json").is_file() and (tmp_path / "run" / "config.yaml").is_file()
