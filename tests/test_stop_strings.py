"""``rollout.stop``: a completion ends at the token whose decoded text first contains a stop string, that token kept.

Most cases use a scripted model: the tiny MoE with its logits replaced so that each token is followed by a fixed
next token (``SCRIPT``), so every completion, and where a stop string must cut it, is known exactly. The character
tokenizer makes each character one token, except the R1 tags (``</answer>`` is a single token).
"""

from __future__ import annotations

import types

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.configio import ConfigError
from rl.config import load_recipe
from rl.trainer import GRPOTrainer
from rollouts.backends import TransformersBackend
from rollouts.records import Prompt
from rollouts.stops import CHUNK, StopStrings

SCRIPT = "Hi</answer>yzWV"
"""What the scripted model writes after a prompt ending in ``:`` (then EOS); tokens H i </answer> y z W V."""
SAMPLERS = ["r1kit", "generate"]


def _load(path):
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    """The tiny qwen3_moe whose next token is ``SCRIPT``'s successor of the last one (EOS after its end).

    A forward hook overwrites the logits, so it acts under the r1kit sampler's forward calls and under
    ``generate`` alike (the fused decode step bypasses forward hooks: these tests turn it off)."""
    from rl.zoo.models import build_char_tokenizer, tiny_model

    path = tmp_path_factory.mktemp("scripted")
    tok = build_char_tokenizer()
    tiny_model("qwen3_moe", tok, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    model, tok = _load(path)
    chain = tok.encode(":" + SCRIPT)
    assert len(set(chain)) == len(chain), "the script's tokens must be distinct for a successor map"
    succ_V = torch.full((model.config.vocab_size,), tok.eos_token_id)
    succ_V[chain[:-1]] = torch.tensor(chain[1:])
    calls: list[int] = []  # rows per forward call

    def force(module, args, kwargs, output):
        ids_BK = kwargs["input_ids"][:, -output.logits.shape[1] :]
        calls.append(ids_BK.shape[0])
        logits_BKV = torch.full_like(output.logits, -1e9)  # probability exactly 0: sampling follows the script too
        output.logits = logits_BKV.scatter(-1, succ_V[ids_BK][..., None], 0.0)
        return output

    model.register_forward_hook(force, with_kwargs=True)
    return types.SimpleNamespace(model=model, tok=tok, calls=calls)


def _backend(s, sampler: str, stop, max_new_tokens: int = 12) -> TransformersBackend:
    return TransformersBackend(
        s.model, s.tok, max_new_tokens=max_new_tokens, sampler=sampler, fused_decode=False, stop=stop
    )


def _one(s, sampler: str, stop, *, prompt: str = "Q:", max_new_tokens: int = 12, greedy: bool = True):
    out = _backend(s, sampler, stop, max_new_tokens).generate(
        [Prompt("p", prompt)], [0], num_generations=1, greedy=greedy
    )
    return out.completions[0]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(
    ("stop", "kept"),
    [
        (["</answer>"], "Hi</answer>"),  # a one-token stop string: that token kept, nothing after it
        (["yz"], "Hi</answer>yz"),  # spans two tokens: ends at the second
        (["i</ans"], "Hi</answer>"),  # ends inside </answer>: the whole token kept, with the text it carries past
        (["H"], "H"),  # the first token
        (["yz", "Hi"], "Hi"),  # the earliest of several wins, whatever their order in the list
        (["</answer>y", "zW"], "Hi</answer>y"),
    ],
    ids=["one-token", "two-tokens", "overhang", "first-token", "earliest", "earliest-2"],
)
def test_completion_ends_at_the_token_completing_the_stop_string(scripted, sampler, stop, kept):
    c = _one(scripted, sampler, stop)
    assert c.token_ids == scripted.tok.encode(kept)
    assert c.text == kept
    assert c.finish_reason == "stop"
    if sampler == "r1kit":
        assert c.logprobs == [0.0] * len(c.token_ids)  # the script's tokens have probability 1, one per token


@pytest.mark.parametrize(
    ("stop", "gen", "kept", "reason"),
    [
        (["yz"], SCRIPT, "Hi</answer>yz", "stop"),  # tokens sampled past the stop (generate's batch ran on): cut
        (["i</ans"], SCRIPT, "Hi</answer>", "stop"),
        (["yz"], "Hi<EOS>yz", "Hi", "eos"),  # an EOS before the stop string ends the row first, EOS kept
        (["yz", "W"], "Hi</answer>y<EOS>", "Hi</answer>y", "eos"),
        (["V"], "Hi</answer>yzWV", "Hi</answer>yzWV", "stop"),  # the last token completes it
        (["Vx"], "Hi</answer>yzWV", "Hi</answer>yzWV", "length"),
    ],
)
def test_completion_cuts_a_row_by_hand(scripted, stop, gen, kept, reason):
    tok = scripted.tok
    eos = tok.eos_token_id
    ids = [t for part in gen.split("<EOS>") for t in [*tok.encode(part), eos]][:-1]  # "<EOS>" marks an EOS token
    c = _backend(scripted, "generate", stop).completion((Prompt("p", "Q:"), 0, tok.encode("Q:")), ids)
    assert c.token_ids == tok.encode(kept) + ([eos] if reason == "eos" else [])
    assert (c.text, c.finish_reason) == (kept, reason)


def test_stop_strings_find_the_completing_token():
    from rl.zoo.models import build_char_tokenizer

    tok = build_char_tokenizer()
    stops = StopStrings(tok, ("ab", "</answer>"))
    assert stops.first_stop(tok.encode("xxaab")) == 5  # x x a a b: the stop completes at 'b', the 5th token
    assert stops.first_stop(tok.encode("x</answer>ab")) == 2  # the one-token tag first
    assert stops.first_stop(tok.encode("xa b")) is None
    assert stops.hits([tok.encode("ya"), tok.encode("yab")]) == [False, True]
    for k in range(CHUNK - 2, CHUNK + 1):  # "ab" across first_stop's chunk boundary, or just after it
        assert stops.first_stop(tok.encode("x" * k + "ab" + "x" * 5)) == k + 2


def test_chunked_search_finds_the_first_window_a_token_by_token_scan_finds():
    # first_stop searches a finished row chunk by chunk; the reference checks every token's window in order, as
    # the r1kit sampler does while decoding. Rows up to 4 chunks long, stop strings of one and of several tokens.
    import random

    from rl.zoo.models import build_char_tokenizer

    tok = build_char_tokenizer()
    stops = StopStrings(tok, ("</answer>", "ab\n"))

    def scan(ids):
        w = stops.window
        return next((t + 1 for t in range(len(ids)) if stops.hits([ids[max(0, t + 1 - w) : t + 1]])[0]), None)

    rng = random.Random(0)
    found = []
    for _ in range(200):
        ids = tok.encode("".join(rng.choices(["a", "b", "\n", "x", "</answer>"], [4, 4, 4, 40, 1], k=4 * CHUNK)))
        ids = ids[: rng.randint(0, len(ids))]
        assert stops.first_stop(ids) == scan(ids), tok.decode(ids)
        found.append(scan(ids))
    assert {None} < set(found) and max(f or 0 for f in found) > 2 * CHUNK, "hits early, late and none"


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_eos_and_length_still_end_completions(scripted, sampler):
    eos = _one(scripted, sampler, ["never"])
    assert eos.token_ids == scripted.tok.encode(SCRIPT) + [scripted.tok.eos_token_id]
    assert (eos.text, eos.finish_reason) == (SCRIPT, "eos")
    cut = _one(scripted, sampler, ["zW"], max_new_tokens=4)  # the stop string would complete at token 6
    assert (cut.text, cut.finish_reason) == ("Hi</answer>y", "length")
    at_cap = _one(scripted, sampler, ["</answer>"], max_new_tokens=3)  # completes exactly at the last allowed token
    assert (at_cap.text, at_cap.finish_reason) == ("Hi</answer>", "stop")


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_stop_string_spanning_prompt_and_completion_does_not_count(scripted, sampler):
    # Only the completion's text is searched (vLLM's rule): ":H" is there only with the prompt's last character.
    from transformers import StopStringCriteria

    tok = scripted.tok
    assert StopStringCriteria(tok, [":H"])(torch.tensor([tok.encode("Q:H")]), None).item()  # on the whole sequence
    c = _one(scripted, sampler, [":H"], greedy=False)
    assert c.finish_reason == "eos" and c.text == SCRIPT


def test_a_stopped_row_leaves_the_r1kit_batch_at_once(scripted):
    # Prompt "Q:" writes H i </answer> ...; prompt "Qi" starts at </answer>, so its rows stop at their first token.
    scripted.calls.clear()
    batch = _backend(scripted, "r1kit", ["</answer>"]).generate(
        [Prompt("a", "Q:"), Prompt("b", "Qi")], [0, 1], num_generations=2
    )
    assert [c.text for c in batch.completions] == ["Hi</answer>"] * 2 + ["</answer>"] * 2
    assert [c.finish_reason for c in batch.completions] == ["stop"] * 4
    # prefill (2 distinct prompts), then decode steps for the 2 live rows only; none after the last stop
    assert scripted.calls == [2, 2, 2]


def test_the_r1kit_sampler_decodes_only_a_short_tail_per_step(scripted, monkeypatch):
    seen: list[int] = []
    hits = StopStrings.hits

    def spy(self, tails):
        seen.extend(len(t) for t in tails)
        return hits(self, tails)

    monkeypatch.setattr(StopStrings, "hits", spy)
    backend = _backend(scripted, "r1kit", ["zzz"])
    backend.generate([Prompt("p", "Q:")], [0], num_generations=1)
    window = len("zzz") + 3  # the stop string's bytes + 3 tokens of slack
    assert backend.stop.window == window
    # one check per sampled token (7 script tokens + EOS), each over at most `window` tokens, not the whole row
    assert seen == [1, 2, 3, 4, 5, 6, 6, 6]


def test_recipe_stop_reaches_the_backend(tiny_random_model_dir):
    cfg = load_recipe(None, ['rollout.stop=["</answer>", "\\n\\n"]'])  # YAML: double quotes read \n as a newline
    assert cfg.rollout.stop == ["</answer>", "\n\n"]
    assert load_recipe(None, []).rollout.stop == []
    model, tok = _load(tiny_random_model_dir("qwen3_moe"))
    fake = types.SimpleNamespace(
        cfg=cfg,
        policy=types.SimpleNamespace(model=model, tokenizer=tok),
        dist=types.SimpleNamespace(sharded=False, world_size=1),
    )
    assert GRPOTrainer._make_backend(fake).stop.strings == ("</answer>", "\n\n")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rollout.stop=['</answer>', '']", r"rollout\.stop: every stop string must be a non-empty string"),
        ("rollout.stop='</answer>'", r"rollout\.stop: expected a list, got str"),
        ("rollout.stop=[3]", r"rollout\.stop\[0\]: expected str, got int"),
    ],
)
def test_bad_stop_strings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(None, [override])


def test_backend_refuses_an_empty_stop_string(scripted):
    with pytest.raises(ValueError, match="non-empty strings"):
        _backend(scripted, "r1kit", [""])
