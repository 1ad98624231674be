"""The engine's faster paths change no greedy token: shared-prefix prefill, continuous batching
(finished rows replaced by waiting ones) and the CPU's grouped decode attention, each against
mlx-lm's one-prompt loop on a tiny random model; seeded samples repeat; the pure helpers."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load
from mlx_lm.generate import generate_step

from rasft_mlx.generation.engine import EngineSettings, RepetitionPenalty, generate_rows
from rasft_mlx.generation.prefill import (
    length_runs,
    prefill_rows,
    shared_prefix,
    shared_prefix_length,
)

NO_EOS = [10**6]
SYSTEM = "Please reason step by step, and put your final answer within boxed."
QUESTIONS = [
    "What is 3 + 4?",
    "Hi",
    "Compute 12 + 30, then double the result and subtract 7.",
    "Mia has 14 apples. She sells 5. How many are left?",
    "Add 1 and 1.",
    "Leo had 3 boxes of 6 pens each and gave away 4 pens. How many pens does he have now?",
    "Zero?",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """SmolLM2's head layout (3 query heads per KV head) in a tiny llama; an untied output
    layer, so that greedy decoding does not just repeat its input token."""
    from tiny_models import make_tiny_model_dir

    directory = make_tiny_model_dir(
        tmp_path_factory.mktemp("tiny-gqa3"),
        hidden_size=96,
        num_attention_heads=6,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    return load(str(directory))


def chat_prompts(tokenizer) -> list[list[int]]:
    """Prompts that share a long opening, as a chat template and system prompt make them."""
    return [tokenizer.encode(f"{SYSTEM}\n{q}") for q in QUESTIONS]


def varied_stop(outputs: list[tuple[int, ...]]) -> int:
    """The generated token whose first occurrences fall at the most distinct steps."""
    spread = {}
    for token in {t for ids in outputs for t in ids}:
        spread[token] = len({ids.index(token) if token in ids else -1 for ids in outputs})
    return max(sorted(spread), key=spread.__getitem__)


def reference(model, prompt, max_tokens, eos):
    """mlx-lm's one-prompt greedy loop: (ids without the stop token, truncated)."""
    ids = []
    for token, _ in generate_step(mx.array(prompt), model, max_tokens=max_tokens):
        if token in eos:
            return ids, False
        ids.append(token)
    return ids, True


def test_shared_prefix_length_stops_short_of_every_last_token():
    assert shared_prefix_length([]) == 0
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the first prompt's last token
    assert shared_prefix_length([[1, 2, 3]]) == 2
    assert shared_prefix_length([[7], [7, 8]]) == 0
    assert shared_prefix_length([[1, 2], [3, 4]]) == 0


def test_length_runs_bound_the_padding_of_rows_in_descending_length():
    assert length_runs([]) == []
    assert length_runs([40, 38, 35, 33, 20, 19, 5], 0.15, 0) == [
        range(0, 3),
        range(3, 4),
        range(4, 6),
        range(6, 7),
    ]
    assert length_runs([40, 38, 35, 33, 20, 19, 5], 0.15, 100) == [range(0, 3), range(3, 7)]
    assert length_runs([0, 0, 0]) == [range(0, 3)]


@pytest.mark.parametrize("min_tokens", [256, 1])
def test_prefill_from_a_shared_prefix_holds_the_same_cache(tiny, min_tokens, monkeypatch):
    """A shared prefix prefilled once, and rows prefilled in runs of similar lengths (many runs
    with min_tokens 1), give the cache of one plain prefill of every row."""
    import rasft_mlx.generation.prefill as prefill

    model, tokenizer = tiny
    prompts = sorted(chat_prompts(tokenizer), key=len, reverse=True)
    prefix = shared_prefix(model, prompts)
    assert prefix is not None and prefix.length > 10
    plain = prefill_rows(model, prompts, 64)
    monkeypatch.setattr(prefill, "MIN_RUN_TOKENS", min_tokens)
    monkeypatch.setattr(prefill, "length_runs", partial(length_runs, min_tokens=min_tokens))
    shared = prefill_rows(model, prompts, 64, prefix)
    for a, b in zip(plain, shared, strict=True):
        assert a._idx == b._idx
        assert np.array_equal(np.array(a.left_padding), np.array(b.left_padding))
        assert np.array_equal(np.array(a.offset), np.array(b.offset))
        for x, y in ((a.keys, b.keys), (a.values, b.values)):
            for row, pad in enumerate(np.array(a.left_padding).tolist()):
                np.testing.assert_allclose(
                    np.array(x[row, :, pad : a._idx]), np.array(y[row, :, pad : b._idx]), atol=1e-5
                )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"shared_prefix": False},
        {"grouped_attention": False},
        {"check_every": 1, "compact_fraction": 0.01, "refill_fraction": 0.01},
        {"max_rows": 4},  # a prompt's two samples finish together: half the batch at once
        {"max_rows": 4, "check_every": 1, "compact_fraction": 1.0, "refill_fraction": 1.0},
    ],
)
def test_greedy_with_stops_and_refills_equals_one_prompt_decoding(tiny, options):
    """Rows stop at different steps and waiting rows take their places (3 or 4 rows for 14
    samples); every row's tokens are those of mlx-lm's loop on its prompt alone."""
    model, tokenizer = tiny
    prompts = chat_prompts(tokenizer)
    first, _ = generate_rows(model, prompts, 1, EngineSettings(max_new_tokens=24), NO_EOS)
    stop = [varied_stop([r[0].token_ids for r in first])]
    settings = EngineSettings(max_new_tokens=24, **{"max_rows": 3, **options})
    results, stats = generate_rows(model, prompts, 2, settings, stop)
    assert stats.rows == 14 and stats.chunks > 3  # rows started in several groups
    lengths = set()
    for prompt, samples in zip(prompts, results, strict=True):
        expected = reference(model, prompt, 24, stop)
        assert [(list(s.token_ids), s.truncated) for s in samples] == [expected] * 2
        lengths.add(len(expected[0]))
    assert len(lengths) > 2  # the rows did finish at different steps
    assert stats.generated_tokens == sum(len(s.token_ids) for r in results for s in r)


def test_seeded_samples_repeat_under_refills(tiny):
    """One lane (test_lanes.py checks seeded samples in several)."""
    model, tokenizer = tiny
    prompts = chat_prompts(tokenizer)
    settings = EngineSettings(
        max_new_tokens=16, temperature=1.0, top_p=0.9, repetition_penalty=1.2, max_rows=4, lanes=1
    )
    first, _ = generate_rows(model, prompts, 1, replace(settings, max_rows=16), NO_EOS, seed=1)
    stop = [varied_stop([r[0].token_ids for r in first])]
    first, stats = generate_rows(model, prompts, 3, settings, stop, seed=7)
    again, _ = generate_rows(model, prompts, 3, settings, stop, seed=7)
    assert first == again
    assert stats.chunks > 2
    samples = [s for r in first for s in r]
    assert len({len(s.token_ids) for s in samples}) > 1
    assert all(len(s.token_ids) == 16 for s in samples if s.truncated)  # no row cut short


@pytest.mark.parametrize("scope", ["window", "all"])
def test_penalty_rows_follow_extend_and_keep(scope):
    penalty = RepetitionPenalty([[1, 2]], mx.array([0, 0]), 2.0, scope)
    penalty.extend([[3], [4, 5]], mx.array([1]))
    logits = mx.ones((3, 6))
    got = np.array(penalty.apply(logits))
    np.testing.assert_allclose(got[:, :6], [[1, 0.5, 0.5, 1, 1, 1]] * 2 + [[1, 1, 1, 1, 0.5, 0.5]])
    penalty.update(mx.array([0, 3, 1]))
    penalty.keep(mx.array([2]))
    penalty.extend([[5]], mx.array([0]))
    got = np.array(penalty.apply(mx.ones((2, 6))))
    np.testing.assert_allclose(got, [[1, 0.5, 1, 1, 0.5, 0.5], [1, 1, 1, 1, 1, 0.5]])


@pytest.mark.parametrize(
    "options",
    [
        {"max_rows": 16},  # every row in one batch
        {"max_rows": 3, "check_every": 1, "compact_fraction": 0.01, "refill_fraction": 0.01},
    ],
)
def test_a_row_stops_at_its_own_limit_while_the_batch_goes_on(tiny, options):
    """Limits per prompt: a row ends at its own, truncated, as a run at that max_new_tokens ends
    it, or at its stop token before it; the other rows of its batch decode on to theirs, each
    row's tokens those of mlx-lm's loop on its prompt alone. Finished rows leave the batch."""
    model, tokenizer = tiny
    prompts = chat_prompts(tokenizer)
    limits = [24, 5, 24, 9, 24, 1, 17]
    settings = EngineSettings(max_new_tokens=24, **options)
    unstopped, stats = generate_rows(model, prompts, 2, settings, NO_EOS, limits=limits)
    for prompt, limit, samples in zip(prompts, limits, unstopped, strict=True):
        expected = reference(model, prompt, limit, NO_EOS)
        assert len(expected[0]) == limit and expected[1]
        assert [(list(s.token_ids), s.truncated) for s in samples] == [expected] * 2
    assert stats.generated_tokens == 2 * sum(limits)
    assert stats.extra["row_steps"] < 14 * 24  # the short rows stopped decoding
    assert stats.compactions > 0

    stop = [varied_stop([r[0].token_ids for r in unstopped])]
    stopped, _ = generate_rows(model, prompts, 2, settings, stop, limits=limits)
    outcomes = set()
    for prompt, limit, samples in zip(prompts, limits, stopped, strict=True):
        expected = reference(model, prompt, limit, stop)
        assert [(list(s.token_ids), s.truncated) for s in samples] == [expected] * 2
        outcomes.add((expected[1], limit < 24))
    assert {(True, True), (False, False)} <= outcomes  # cut at a short limit; stopped before 24


def test_limits_name_one_positive_limit_per_prompt(tiny):
    model, tokenizer = tiny
    prompts = chat_prompts(tokenizer)[:2]
    settings = EngineSettings(max_new_tokens=4)
    for limits in ([4], [4, 0]):
        with pytest.raises(ValueError, match="one limit of at least 1"):
            generate_rows(model, prompts, 1, settings, NO_EOS, limits=limits)
