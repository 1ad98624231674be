"""Every loss mode against hand-computed values, the ratio's clip bounds, and stop-gradients."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from rasft_mlx.training.losses import (
    LossSettings,
    clipped_inverse_ratio,
    loss_sum_and_tokens,
    mean_loss,
    reference_kl,
    token_logprobs,
)


def uniform_case(vocab: int, tokens: int = 3):
    logits = mx.zeros((1, tokens, vocab))
    targets = mx.zeros((1, tokens), dtype=mx.int32)
    mask = mx.ones((1, tokens))
    return logits, targets, mask


@pytest.mark.parametrize(
    ("mode", "vocab", "expected"),
    [
        ("sft", 4, math.log(4)),  # CE of a uniform distribution
        ("dft", 4, 0.25 * math.log(4)),  # p_t = 1/4
        ("profit", 4, math.log(4)),  # p_t = 0.25 > 0.1: every token kept
        ("profit", 16, math.log(16)),  # p_t = 0.0625 < 0.1: none kept -> plain SFT
        ("sft_kl", 4, math.log(4)),  # reference == policy: KL = 0
        ("asft", 4, 0.25 * math.log(4)),
    ],
)
def test_uniform_logits_hand_values(mode, vocab, expected):
    logits, targets, mask = uniform_case(vocab)
    loss = mean_loss(
        logits, targets, mask, LossSettings(mode), reference_logits=mx.zeros_like(logits)
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def numpy_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture()
def random_case():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32) * 2
    reference = rng.normal(size=(2, 5, 7)).astype(np.float32) * 2
    targets = rng.integers(0, 7, size=(2, 5)).astype(np.int32)
    mask = np.array([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=np.float32)
    return logits, reference, targets, mask


def test_token_logprobs_match_numpy(random_case):
    logits, _, targets, _ = random_case
    expected = np.take_along_axis(numpy_log_softmax(logits), targets[..., None], -1)[..., 0]
    got = token_logprobs(mx.array(logits), mx.array(targets))
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["sft", "dft", "profit", "sft_kl", "asft"])
def test_modes_match_a_numpy_reference(random_case, mode):
    logits, reference, targets, mask = random_case
    log_p = np.take_along_axis(numpy_log_softmax(logits), targets[..., None], -1)[..., 0]
    ce, p = -log_p, np.exp(log_p)
    ref_log = numpy_log_softmax(reference)
    kl = (np.exp(ref_log) * (ref_log - numpy_log_softmax(logits))).sum(-1)
    per_token = {
        "sft": ce,
        "dft": p * ce,
        "profit": (p > 0.1) * ce,
        "sft_kl": ce + 0.1 * kl,
        "asft": p * ce + 0.1 * kl,
    }[mode]
    counted = (p > 0.1) * mask if mode == "profit" else mask  # ProFit: a mean over kept tokens
    assert mode != "profit" or 0 < counted.sum() < mask.sum()  # some kept, some not
    expected = (per_token * mask).sum() / counted.sum()
    total, count = loss_sum_and_tokens(
        mx.array(logits),
        mx.array(targets),
        mx.array(mask),
        LossSettings(mode, kl_lambda=0.1),
        reference_logits=mx.array(reference),
    )
    assert count.item() == counted.sum()
    assert total.item() / count.item() == pytest.approx(float(expected), rel=1e-5)


def test_profit_keeping_no_token_is_plain_sft(random_case):
    """The authors' fallback: when no token has p_t above the threshold, the batch is SFT."""
    logits, _, targets, mask = random_case
    log_p = np.take_along_axis(numpy_log_softmax(logits), targets[..., None], -1)[..., 0]
    expected = (-log_p * mask).sum() / mask.sum()
    total, count = loss_sum_and_tokens(
        mx.array(logits),
        mx.array(targets),
        mx.array(mask),
        LossSettings("profit", profit_threshold=1.0),
    )
    assert count.item() == mask.sum()
    assert total.item() / count.item() == pytest.approx(float(expected), rel=1e-5)


def test_reference_kl_is_zero_for_equal_and_positive_otherwise(random_case):
    logits, reference, _, _ = random_case
    same = reference_kl(mx.array(logits), mx.array(logits))
    assert np.abs(np.array(same)).max() < 1e-5
    assert np.array(reference_kl(mx.array(logits), mx.array(reference))).min() > 0


@pytest.mark.parametrize(
    ("policy", "reference", "expected"),
    [
        (-0.1, -8.0, 0.4),  # policy far above the reference: exp(-7.9) clipped up to 0.4
        (-8.0, -0.1, 1.2),  # policy far below: exp(7.9) clipped down to 1.2
        (-2.0, -2.0, 1.0),  # equal
        (-2.0, -2.1, math.exp(-0.1)),  # inside the bounds: the plain inverse ratio
        (-60.0, 0.0, 1.2),  # beyond the +-20 clamp: still finite, clipped
    ],
)
def test_clipped_inverse_ratio(policy, reference, expected):
    mask = mx.array([[0.0, 1.0, 1.0]])
    policy_lp = mx.array([[5.0, policy, policy]])  # the masked first position must not count
    reference_lp = mx.array([[-9.0, reference, reference]])
    rho = clipped_inverse_ratio(policy_lp, reference_lp, mask, 0.4, 1.2)
    assert rho.item() == pytest.approx(expected, rel=1e-5)


def test_rasft_with_unit_weight_and_ratio_is_dft(random_case):
    logits, _, targets, mask = random_case
    args = (mx.array(logits), mx.array(targets), mx.array(mask))
    policy_lp = token_logprobs(*args[:2])
    dft = mean_loss(*args, LossSettings("dft"))
    rasft = mean_loss(
        *args,
        LossSettings("rasft"),
        sequence_weights=mx.ones((2,)),
        reference_logprobs=policy_lp,  # equal to the policy: rho = 1
    )
    assert rasft.item() == pytest.approx(dft.item(), rel=1e-6)


def test_rasft_hand_value_with_weight_and_clipped_ratio():
    logits, targets, mask = uniform_case(4, tokens=2)  # log p = -ln 4 per token
    reference = mx.full((1, 2), -10.0)  # far below the policy: rho = 0.4
    loss = mean_loss(
        logits,
        targets,
        mask,
        LossSettings("rasft"),
        sequence_weights=mx.array([0.5]),
        reference_logprobs=reference,
    )
    assert loss.item() == pytest.approx(0.4 * 0.5 * 0.25 * math.log(4), rel=1e-6)
    no_dft = mean_loss(
        logits,
        targets,
        mask,
        LossSettings("rasft", dft_factor=False),
        sequence_weights=mx.array([0.5]),
        reference_logprobs=reference,
    )
    assert no_dft.item() == pytest.approx(0.4 * 0.5 * math.log(4), rel=1e-6)


@pytest.mark.parametrize("mode", ["dft", "rasft", "profit"])
def test_gradient_does_not_flow_through_weights(random_case, mode):
    """d loss / d logits must equal w_t * (softmax - onehot) / N with w_t held constant."""
    logits, _, targets, mask = random_case
    reference_lp = mx.array(np.full((2, 5), -1.5, dtype=np.float32))
    weights = mx.array([0.7, 0.3])
    settings = LossSettings(mode)

    def loss_of(x):
        return mean_loss(
            x,
            mx.array(targets),
            mx.array(mask),
            settings,
            sequence_weights=weights,
            reference_logprobs=reference_lp,
        )

    grad = np.array(mx.grad(loss_of)(mx.array(logits)))
    log_p_all = numpy_log_softmax(logits)
    log_p = np.take_along_axis(log_p_all, targets[..., None], -1)[..., 0]
    p = np.exp(log_p)
    if mode == "dft":
        w = p
    elif mode == "profit":
        w = (p > 0.1).astype(np.float32)
    else:
        s_policy = (log_p * mask).sum(-1) / mask.sum(-1)
        s_reference = (-1.5 * mask).sum(-1) / mask.sum(-1)
        rho = np.clip(np.exp(s_reference - s_policy), 0.4, 1.2)
        w = (rho * np.array([0.7, 0.3]))[:, None] * p
    onehot = np.eye(7, dtype=np.float32)[targets]
    denominator = ((p > 0.1) * mask).sum() if mode == "profit" else mask.sum()
    expected = (w * mask)[..., None] * (np.exp(log_p_all) - onehot) / denominator
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_rasft_requires_its_inputs(random_case):
    logits, _, targets, mask = random_case
    with pytest.raises(ValueError, match="sequence_weights"):
        mean_loss(mx.array(logits), mx.array(targets), mx.array(mask), LossSettings("rasft"))
