"""DAPO dynamic sampling and overlong filtering: pure selection logic and the round loop with fake rollouts."""

from __future__ import annotations

import torch

from rewards.scoring import RewardColumn, RewardScores
from rl.groups import collect_groups, informative_groups, mask_rows, select_groups
from rollouts.records import Completion, Prompt, RolloutBatch

NAN = float("nan")


def test_informative_groups_edge_cases():
    reward = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, NAN, 1.0, NAN, NAN, 0.5])
    group = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5])
    # 0: all 1 (drop); 1: all 0 (drop); 2: mixed (keep); 3: one valid reward left (drop); 4: all abstained (drop);
    # 5: a group of one (drop).
    assert informative_groups(reward, group) == [2]


def test_select_keeps_first_groups_in_order_of_appearance():
    reward = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.2, 0.3])
    group = torch.tensor([9, 9, 4, 4, 7, 7, 1, 1])
    assert select_groups(reward, group, need=2).tolist() == [True, True, False, False, True, True, False, False]
    assert select_groups(reward, group, need=5).sum() == 6  # only 3 informative groups exist


def test_mask_rows_zeroes_truncated_completions_only():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert mask_rows(mask, torch.tensor([False, True])).tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]


class FakeRollouts:
    """Round r's prompt p gets rewards from ``plan``: 'mixed' -> [0, 1], 'same' -> [1, 1] (G = 2)."""

    def __init__(self, plan: list[str]) -> None:
        self.plan, self.next_id, self.calls = plan, 0, []

    def generate(self, n: int) -> RolloutBatch:
        self.calls.append(n)
        out = []
        for _ in range(n):
            g = self.next_id
            self.next_id += 1
            kind = self.plan[g] if g < len(self.plan) else "same"
            for r in [0.0, 1.0] if kind == "mixed" else [1.0, 1.0]:
                out.append(Completion(g, Prompt(str(g), "q"), [1], [2], str(r), "eos"))
        return RolloutBatch(out)

    @staticmethod
    def score(batch: RolloutBatch) -> tuple[RewardScores, torch.Tensor]:
        vals = [float(c.text) for c in batch.completions]
        scores = RewardScores.weighted([RewardColumn("acc", tuple(vals), ({},) * len(vals))], {"acc": 1.0})
        return scores, torch.tensor(vals)


def test_dynamic_sampling_refills_the_batch():
    # Round 1: 4 prompts, 2 mixed -> keep rate 1/2, 2 missing -> ceil(2 / 0.5) = 4 prompts, of which 2 mixed.
    fake = FakeRollouts(["mixed", "same", "mixed", "same", "same", "mixed", "mixed", "same"])
    s = collect_groups(fake.generate, fake.score, prompts=4, dynamic=True, max_rounds=3)
    assert fake.calls == [4, 4]
    assert s.metrics["dynamic_sampling/rounds"] == 2
    assert s.metrics["dynamic_sampling/dropped_groups"] == 4
    assert s.metrics["dynamic_sampling/missing_groups"] == 0
    assert sorted({c.group_id for c in s.kept.completions}) == [0, 2, 5, 6]
    assert len(s.scores.total) == len(s.batch) == 16  # reward metrics see every sampled completion


def test_dynamic_sampling_stops_after_max_rounds_and_reports():
    fake = FakeRollouts(["mixed", "same", "same", "same"])
    s = collect_groups(fake.generate, fake.score, prompts=4, dynamic=True, max_rounds=2)
    assert fake.calls == [4, 4]  # keep rate 1/4: ceil(3 * 4) capped at one full round
    assert s.metrics["dynamic_sampling/missing_groups"] == 3
    assert [c.group_id for c in s.kept.completions] == [0, 0]


def test_no_informative_group_trains_on_everything():
    fake = FakeRollouts(["same"] * 4)
    s = collect_groups(fake.generate, fake.score, prompts=2, dynamic=True, max_rounds=2)
    assert s.keep_B.all() and s.metrics["dynamic_sampling/missing_groups"] == 2


def test_without_dynamic_sampling_one_round_keeps_all():
    fake = FakeRollouts(["same", "mixed"])
    s = collect_groups(fake.generate, fake.score, prompts=2, dynamic=False, max_rounds=3)
    assert fake.calls == [2] and s.keep_B.all()
    assert not any(k.startswith("dynamic_sampling/") for k in s.metrics)


def has_seven(prompts, completions, **kwargs):
    """Binary reward for the trainer test below: some random-model groups are all 0 (dropped), some mixed."""
    return [float("7" in c) for c in completions]


def test_trainer_step_with_dynamic_sampling_and_overlong_filtering(tiny_random_model_dir, tmp_path):
    import math
    from pathlib import Path

    from rl.config import load_recipe
    from rl.trainer import GRPOTrainer

    cfg = load_recipe(
        None,
        [
            f"model.name_or_path={tiny_random_model_dir('qwen3_moe')}",
            "data.task=arith",
            "data.num_train=64",
            "data.num_eval=0",
            "rollout.max_new_tokens=10",
            "algorithm.num_generations=4",
            "algorithm.batch_size=8",
            "algorithm.loss=dapo",
            "algorithm.dynamic_sampling=true",
            "algorithm.max_sampling_rounds=3",
            "algorithm.mask_truncated=true",
            f"rewards.rules=[{{name: '{Path(__file__)}:has_seven'}}]",
            "training.max_steps=1",
            "training.torch_threads=2",
            "logging.progress=false",
        ],
    )
    trainer = GRPOTrainer(cfg, tmp_path)
    m = trainer.train_step()
    assert 1 <= m["dynamic_sampling/rounds"] <= 3
    assert m["dynamic_sampling/missing_groups"] + 2 - m["dynamic_sampling/surplus_groups"] >= 0
    assert math.isfinite(m["loss"])
    assert trainer.sampler.position >= 2  # every round's prompts are consumed from the sampler
