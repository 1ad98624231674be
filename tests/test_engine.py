"""The rollout engine samples as mlx-lm does: greedy and seeded draws (exactly, with the candidate
top-p off), distributions (with it on), stops."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from chi_square import assert_fits
from mlx_lm import load
from mlx_lm.generate import batch_generate, generate_step
from mlx_lm.sample_utils import (
    apply_top_p,
    make_logits_processors,
    make_repetition_penalty,
    make_sampler,
)

from rasft_mlx.generation.engine import (
    EngineSettings,
    RepetitionPenalty,
    generate_rows,
    penalize_repetition,
    penalize_seen,
    supports_model,
)
from rasft_mlx.generation.nucleus import candidate_nucleus, normalise
from rasft_mlx.generation.scheduler import WorkQueue
from rasft_mlx.models.adapters import adapter_modules, apply_adapters
from rasft_mlx.recipe.config import LoraConfig

NO_EOS = [10**6]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return load(str(tiny_llama_dir))


def prompts_of(tokenizer):
    texts = ["What is 3 + 4?", "Hi", "Compute 12 + 30, then double the result and subtract 7."]
    return [tokenizer.encode(t) for t in texts]


def reference_generate(model, prompt, max_tokens, eos, sampler=None, processors=None):
    """mlx-lm's single-sequence loop: (ids without the stop token, truncated)."""
    ids = []
    for token, _ in generate_step(
        mx.array(prompt),
        model,
        max_tokens=max_tokens,
        sampler=sampler,
        logits_processors=processors,
    ):
        if token in eos:
            return ids, False
        ids.append(token)
    return ids, True


def test_the_tiny_model_uses_plain_kv_caches(tiny):
    assert supports_model(tiny[0])


def test_greedy_equals_mlx_lm_per_prompt_with_mixed_lengths_and_chunks(tiny):
    model, tokenizer = tiny
    prompts = prompts_of(tokenizer)
    assert len({len(p) for p in prompts}) == 3
    for max_rows in (64, 4):  # one chunk; a prompt's samples split across chunks
        settings = EngineSettings(max_new_tokens=24, max_rows=max_rows)
        results, stats = generate_rows(model, prompts, 2, settings, NO_EOS)
        assert stats.rows == 6
        for prompt, samples in zip(prompts, results, strict=True):
            expected, _ = reference_generate(model, prompt, 24, NO_EOS)
            assert [list(s.token_ids) for s in samples] == [expected, expected]
            assert all(s.truncated for s in samples)


def test_greedy_equals_mlx_lm_batch_generate(tiny):
    model, tokenizer = tiny
    prompts = prompts_of(tokenizer)
    response = batch_generate(model, tokenizer, prompts, max_tokens=20, return_token_ids=True)
    results, _ = generate_rows(
        model, prompts, 1, EngineSettings(max_new_tokens=20), tokenizer.eos_token_ids
    )
    assert [list(r[0].token_ids) for r in results] == response.token_ids


@pytest.mark.parametrize(
    ("temperature", "top_p", "penalty"),
    [(0.9, 1.0, 1.0), (0.9, 0.95, 1.0), (1.0, 0.9, 1.3), (0.0, 1.0, 1.5)],
)
def test_seeded_draws_equal_mlx_lm_generate_step(tiny, temperature, top_p, penalty):
    """One row draws exactly what mlx-lm's loop draws from the same seed (full-sort top-p)."""
    model, tokenizer = tiny
    prompt = prompts_of(tokenizer)[0]
    processors = make_logits_processors(repetition_penalty=penalty) if penalty != 1.0 else None
    mx.random.seed(5)
    expected, _ = reference_generate(
        model, prompt, 40, NO_EOS, make_sampler(temperature, top_p), processors
    )
    settings = EngineSettings(40, temperature, top_p, penalty, top_p_candidates=0)
    results, _ = generate_rows(model, [prompt], 1, settings, NO_EOS, seed=5)
    assert list(results[0][0].token_ids) == expected


def test_batched_repetition_penalty_equals_mlx_lm_processor():
    rng = np.random.default_rng(0)
    logits = mx.array(rng.normal(size=(3, 50)).astype(np.float32))
    context = rng.integers(0, 50, size=(3, 20))
    context[1, :12] = context[1, 12]  # a short context left-filled with a repeat
    batched = np.array(penalize_repetition(logits, mx.array(context), 1.4))
    processor = make_repetition_penalty(1.4, 20)
    for row in range(3):
        tokens = mx.array(np.unique(context[row]))
        expected = np.array(processor(tokens, logits[row : row + 1]))[0]
        np.testing.assert_allclose(batched[row], expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("temperature", "top_p", "candidates"),
    [(0.8, 1.0, None), (1.0, 1.0, 24), (1.0, 0.9, 0), (0.7, 0.9, "covering")],
)
def test_first_token_distribution_matches_the_model(tiny, temperature, top_p, candidates):
    """Rows of two prompts of different lengths (left padding) sample softmax(logits / T),
    restricted to mlx-lm's nucleus under top-p: with the full sort, and drawn among candidates
    that hold the nucleus."""
    model, tokenizer = tiny
    prompts = prompts_of(tokenizer)[1:]
    last_logits = mx.concatenate([model(mx.array([p]))[:, -1, :] for p in prompts])
    if candidates == "covering":
        nucleus = np.isfinite(np.array(apply_top_p(normalise(last_logits), top_p))).sum(axis=-1)
        candidates = int(nucleus.max()) + 4
        assert candidates < last_logits.shape[-1]
        assert candidate_nucleus(last_logits, top_p, candidates)[2].all().item()
    n = 3000
    settings = EngineSettings(
        max_new_tokens=1,
        temperature=temperature,
        top_p=top_p,
        max_rows=n,
        top_p_candidates=candidates,
    )
    results, _ = generate_rows(model, prompts, n, settings, NO_EOS, seed=3)
    for logits, samples in zip(last_logits, results, strict=True):
        logits = logits.astype(mx.float32)
        probs = np.array(mx.softmax(logits / temperature))
        logp = np.array(logits - mx.logsumexp(logits))
        if top_p < 1.0:
            order = np.sort(np.exp(logp))
            mass_above = np.cumsum(order[::-1])[::-1] - order
            threshold = np.log(order[(mass_above >= top_p).sum()])
            probs = np.where(logp < threshold, 0.0, probs)
            probs /= probs.sum()
        counts = np.bincount([s.token_ids[0] for s in samples], minlength=len(probs))
        assert counts[probs == 0].sum() == 0
        assert_fits(counts, probs)


def test_max_new_tokens_truncates_and_eos_stops(tiny):
    model, tokenizer = tiny
    prompts = prompts_of(tokenizer)
    settings = EngineSettings(max_new_tokens=16)
    greedy, _ = generate_rows(model, prompts, 1, settings, NO_EOS)
    first = list(greedy[0][0].token_ids)
    assert len(first) == 16 and greedy[0][0].truncated
    stop = first[5]
    stop_at = first.index(stop)
    stopped, stats = generate_rows(model, prompts, 1, settings, [stop])
    assert list(stopped[0][0].token_ids) == first[:stop_at]
    assert not stopped[0][0].truncated
    for prompt, samples in zip(prompts, stopped, strict=True):
        expected, truncated = reference_generate(model, prompt, 16, [stop])
        assert list(samples[0].token_ids) == expected
        assert samples[0].truncated == truncated
    assert stats.generated_tokens == sum(len(s[0].token_ids) for s in stopped)


def test_dropping_finished_rows_changes_nothing(tiny):
    """Greedy rows that stop early are dropped from the batch; the others go on unchanged."""
    model, tokenizer = tiny
    prompts = prompts_of(tokenizer)
    first, _ = generate_rows(model, prompts, 1, EngineSettings(max_new_tokens=30), NO_EOS)
    stop = [first[0][0].token_ids[2], first[2][0].token_ids[9]]
    compacting = EngineSettings(max_new_tokens=30, check_every=1, compact_fraction=0.01)
    never = EngineSettings(max_new_tokens=30, compact_fraction=2.0)
    with_drops, stats = generate_rows(model, prompts, 3, compacting, stop)
    without, _ = generate_rows(model, prompts, 3, never, stop)
    assert with_drops == without
    for prompt, samples in zip(prompts, without, strict=True):
        expected = reference_generate(model, prompt, 30, stop)
        assert [(list(s.token_ids), s.truncated) for s in samples] == [expected] * 3


def test_samples_of_one_prompt_differ_and_seeds_reproduce(tiny):
    model, tokenizer = tiny
    prompts = prompts_of(tokenizer)
    settings = EngineSettings(max_new_tokens=20, temperature=1.0, top_p=0.95)
    first, _ = generate_rows(model, prompts, 4, settings, NO_EOS, seed=11)
    again, _ = generate_rows(model, prompts, 4, settings, NO_EOS, seed=11)
    other, _ = generate_rows(model, prompts, 4, settings, NO_EOS, seed=12)
    assert first == again
    assert first != other
    for samples in first:
        assert len({s.token_ids for s in samples}) == 4


def test_samples_come_from_the_live_adapter(tiny_llama_dir):
    model, tokenizer = load(str(tiny_llama_dir))
    apply_adapters(model, LoraConfig(rank=4, scale=2.0))
    prompts = prompts_of(tokenizer)
    settings = EngineSettings(max_new_tokens=16)
    before, _ = generate_rows(model, prompts, 1, settings, NO_EOS)
    mx.random.seed(1)
    for _, module in adapter_modules(model):
        module.lora_b = mx.random.normal(module.lora_b.shape) * 0.5
    mx.eval(model.parameters())
    after, _ = generate_rows(model, prompts, 1, settings, NO_EOS)
    assert before != after
    for prompt, samples in zip(prompts, after, strict=True):
        assert list(samples[0].token_ids) == reference_generate(model, prompt, 16, NO_EOS)[0]


def test_work_queue_hands_out_every_sample_longest_prompt_first():
    prompts = [[1] * n for n in (3, 9, 5, 7)]
    queue = WorkQueue(prompts, [3, 2, 4, 1])
    groups = [queue.take(room) for room in (4, 1, 3, 10, 5)]
    assert [sum(n for _, n in g) for g in groups] == [4, 1, 3, 2, 0]
    assert groups[0] == [(1, 2), (3, 1), (2, 1)]  # longest prompt first, samples split
    totals = {}
    for group in groups:
        for index, n in group:
            totals[index] = totals.get(index, 0) + n
    assert totals == {0: 3, 1: 2, 2: 4, 3: 1}
    assert queue.rows_left == 0


def test_generate_completions_keeps_prompt_order_and_matches_batch_generate(tiny):
    from rasft_mlx.generation.completions import (
        SamplingSettings,
        _batch_generate_completions,
        generate_completions,
    )

    model, tokenizer = tiny
    a, b, c = prompts_of(tokenizer)
    prompts = [b, a, b, c, a, b]  # repeats in any order share a prefill
    settings = SamplingSettings(max_new_tokens=12, batch_size=4)
    completions, stats = generate_completions(model, tokenizer, prompts, settings)
    expected, _ = _batch_generate_completions(model, tokenizer, prompts, settings, None)
    assert completions == expected
    assert stats.prompts == 6 and stats.generated_tokens == sum(len(x.token_ids) for x in expected)


def hand_penalised(logits: np.ndarray, seen: set[int], penalty: float) -> np.ndarray:
    """The sign-aware penalty, by hand: divide a seen token's positive logit, multiply a negative."""
    out = logits.astype(np.float64).copy()
    for token in seen:
        out[token] = out[token] * penalty if out[token] < 0 else out[token] / penalty
    return out


def test_penalize_seen_by_hand_on_a_tiny_vocabulary():
    logits = mx.array([[2.0, -1.0, 0.5, -3.0, 1.0]])
    seen = mx.array([[True, True, False, False, True]])
    got = np.array(penalize_seen(logits, seen, 2.0))[0]
    np.testing.assert_allclose(got, [1.0, -2.0, 0.5, -3.0, 0.5])


@pytest.mark.parametrize("scope", ["window", "all"])
def test_first_token_distribution_under_each_repetition_scope(tiny, scope):
    """A prompt of 40+ tokens: scope "all" penalises every prompt token (vLLM), "window" only the
    last 20 (mlx-lm). Draws at T = 0.8 fit softmax(penalised logits / T) computed by hand."""
    model, tokenizer = tiny
    prompt = tokenizer.encode("Compute 12 + 30, then double the result and subtract 7. " * 3)
    assert len(prompt) > 40
    logits = np.array(model(mx.array([prompt]))[0, -1, :].astype(mx.float32))
    seen = set(prompt) if scope == "all" else set(prompt[-20:])
    assert set(prompt) != set(prompt[-20:])  # the scopes differ on this prompt
    expected = hand_penalised(logits, seen, 3.0) / 0.8
    probs = np.exp(expected - expected.max())
    probs /= probs.sum()
    n = 3000
    settings = EngineSettings(
        max_new_tokens=1,
        temperature=0.8,
        repetition_penalty=3.0,
        repetition_scope=scope,
        max_rows=n,
    )
    results, _ = generate_rows(model, [prompt], n, settings, NO_EOS, seed=5)
    counts = np.bincount([s.token_ids[0] for s in results[0]], minlength=len(probs))
    assert_fits(counts, probs)


def test_penalty_state_follows_the_output_and_dropped_rows():
    penalty = RepetitionPenalty([[1, 2], [3]], mx.array([0, 1, 1]), 2.0, "all")
    logits = mx.ones((3, 6))
    first = np.array(penalty.apply(logits))
    np.testing.assert_allclose(first[:, :4], [[1, 0.5, 0.5, 1], [1, 1, 1, 0.5], [1, 1, 1, 0.5]])
    penalty.update(mx.array([5, 0, 4]))
    penalty.keep(mx.array([0, 2]))
    after = np.array(penalty.apply(mx.ones((2, 6))))
    np.testing.assert_allclose(after, [[1, 0.5, 0.5, 1, 1, 0.5], [1, 1, 1, 0.5, 0.5, 1]])


def test_generate_completions_with_limits_matches_batch_generate(tiny):
    """Limits per prompt through the entry point: repeats of one prompt with different limits
    decode apart, and the engine and the mlx-lm fallback cut and mark each at its own."""
    from rasft_mlx.generation.completions import (
        SamplingSettings,
        _batch_generate_completions,
        generate_completions,
    )

    model, tokenizer = tiny
    a, b, c = prompts_of(tokenizer)
    prompts = [b, a, b, c, a, b]
    limits = [3, 12, 7, 12, 12, 3]
    settings = SamplingSettings(max_new_tokens=12, batch_size=4)
    completions, stats = generate_completions(model, tokenizer, prompts, settings, limits=limits)
    expected, _ = _batch_generate_completions(
        model, tokenizer, prompts, settings, None, None, limits
    )
    assert completions == expected
    assert [len(x.token_ids) for x in completions] == limits  # the tiny model never stops
    assert all(x.truncated for x in completions)
    assert stats.generated_tokens == sum(limits)
