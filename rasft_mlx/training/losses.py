"""Per-token losses of every mode (spec sections 1 and 6) as pure functions of arrays.

Each function returns the *sum* of the weighted per-token loss over unmasked tokens and the token
count, so gradient accumulation can divide by the token count of the whole optimizer step (the
spec's token mean over the batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

RATIO_LOG_CLAMP = 20.0


@dataclass(frozen=True)
class LossSettings:
    mode: str
    kl_lambda: float = 0.1
    profit_threshold: float = 0.1
    dft_factor: bool = True
    ratio_min: float = 0.4
    ratio_max: float = 1.2

    @property
    def needs_reference_logits(self) -> bool:
        return self.mode in ("sft_kl", "asft")

    @property
    def needs_reference_logprobs(self) -> bool:
        return self.mode == "rasft"


def token_logprobs(logits: mx.array, targets: mx.array) -> mx.array:
    """log pi(y_t) for each target token: (B, T, V), (B, T) -> (B, T), computed in float32."""
    logits = logits.astype(mx.float32)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    return picked - mx.logsumexp(logits, axis=-1)


def masked_sequence_mean(values: mx.array, mask: mx.array) -> mx.array:
    """Mean over each row's unmasked positions: (B, T) -> (B,); empty rows give 0."""
    mask = mask.astype(values.dtype)
    return (values * mask).sum(axis=-1) / mx.maximum(mask.sum(axis=-1), 1.0)


def clipped_inverse_ratio(
    policy_logprobs: mx.array,
    reference_logprobs: mx.array,
    mask: mx.array,
    ratio_min: float,
    ratio_max: float,
) -> mx.array:
    """rho = clip(exp(clamp(s_ref - s_theta, -20, 20)), min, max) per sequence, without gradient."""
    s_policy = masked_sequence_mean(mx.stop_gradient(policy_logprobs), mask)
    s_reference = masked_sequence_mean(reference_logprobs, mask)
    log_ratio = mx.clip(s_reference - s_policy, -RATIO_LOG_CLAMP, RATIO_LOG_CLAMP)
    return mx.stop_gradient(mx.clip(mx.exp(log_ratio), ratio_min, ratio_max))


def reference_kl(policy_logits: mx.array, reference_logits: mx.array) -> mx.array:
    """KL(pi_ref || pi_theta) over the full vocabulary at each position: -> (B, T)."""
    policy_log = policy_logits.astype(mx.float32)
    policy_log = policy_log - mx.logsumexp(policy_log, axis=-1, keepdims=True)
    reference_log = reference_logits.astype(mx.float32)
    reference_log = reference_log - mx.logsumexp(reference_log, axis=-1, keepdims=True)
    return (mx.exp(reference_log) * (reference_log - policy_log)).sum(axis=-1)


def token_weights(
    policy_logprobs: mx.array,
    mask: mx.array,
    settings: LossSettings,
    sequence_weights: mx.array | None = None,
    reference_logprobs: mx.array | None = None,
) -> tuple[mx.array, mx.array]:
    """The detached weight w_t multiplying each token's cross-entropy, and the ratio rho (B,)."""
    probability = mx.exp(mx.stop_gradient(policy_logprobs))
    rho = mx.ones(policy_logprobs.shape[:1])
    mode = settings.mode
    if mode in ("sft", "sft_kl", "rft"):  # rft: CE on demos and correct rollouts alike
        weights = mx.ones_like(policy_logprobs)
    elif mode in ("dft", "asft"):
        weights = probability
    elif mode == "profit":
        weights = (probability > settings.profit_threshold).astype(policy_logprobs.dtype)
    elif mode == "rasft":
        if sequence_weights is None or reference_logprobs is None:
            raise ValueError("rasft loss needs sequence_weights and reference_logprobs")
        rho = clipped_inverse_ratio(
            policy_logprobs, reference_logprobs, mask, settings.ratio_min, settings.ratio_max
        )
        weights = (rho * sequence_weights)[:, None] * mx.ones_like(policy_logprobs)
        if settings.dft_factor:
            weights = weights * probability
    else:
        raise ValueError(f"unknown training mode {mode!r}")
    return mx.stop_gradient(weights), rho


def loss_terms(
    logits: mx.array,
    targets: mx.array,
    mask: mx.array,
    settings: LossSettings,
    *,
    sequence_weights: mx.array | None = None,
    reference_logprobs: mx.array | None = None,
    reference_logits: mx.array | None = None,
) -> tuple[mx.array, mx.array, mx.array]:
    """sum_{i,t} mask * (w_t * CE_t [+ lambda * KL_t]), sum(mask), and each row's ratio rho.

    ProFit counts only its kept tokens (stop_grad(p_t) > threshold), so the step's mean is over
    them; a batch keeping none falls back to plain SFT over every response token.
    """
    policy_logprobs = token_logprobs(logits, targets)
    weights, rho = token_weights(
        policy_logprobs, mask, settings, sequence_weights, reference_logprobs
    )
    mask = mask.astype(mx.float32)
    if settings.mode == "profit":
        # Averaged over the kept tokens; a batch that keeps none is plain SFT (authors' train_v2).
        kept = weights * mask
        any_kept = kept.sum() > 0
        mask = mx.where(any_kept, kept, mask)
        weights = mx.where(any_kept, weights, mx.ones_like(weights))
    per_token = -weights * policy_logprobs
    if settings.needs_reference_logits:
        if reference_logits is None:
            raise ValueError(f"{settings.mode} loss needs reference_logits")
        per_token = per_token + settings.kl_lambda * reference_kl(logits, reference_logits)
    return (per_token * mask).sum(), mask.sum(), rho


def loss_sum_and_tokens(*args, **kwargs) -> tuple[mx.array, mx.array]:
    """The loss sum and token count of `loss_terms`, without the ratios."""
    total, count, _ = loss_terms(*args, **kwargs)
    return total, count


def mean_loss(*args, **kwargs) -> mx.array:
    """The spec's token-mean loss of one batch (for tests and reporting)."""
    total, count = loss_sum_and_tokens(*args, **kwargs)
    return total / mx.maximum(count, 1.0)
