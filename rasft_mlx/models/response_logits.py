"""Vocabulary logits at chosen positions only: hidden states are gathered before the output head.

Training and reference log-probs need logits at response positions, not at prompt tokens or
padding; the output projection and the log-softmax over the vocabulary are the largest per-token
costs after the transformer layers (on Qwen2.5-0.5B the head holds 136M of 494M parameters).
mlx-lm's llama-style models compute `head(model.model(inputs))`; families that do more in
`__call__` (logit soft-capping, scaling) are detected by an exact comparison on a short input and
get full logits, gathered afterwards.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn

PROBE_TOKENS = [[1, 2, 3, 4]]


def output_head(model: nn.Module) -> Callable[[mx.array], mx.array] | None:
    """`head` with `model(x) == head(model.model(x))` bit for bit, or None when there is none."""
    body = getattr(model, "model", None)
    if not isinstance(body, nn.Module):
        return None
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Module):
        embedding = getattr(body, "embed_tokens", None)
        head = getattr(embedding, "as_linear", None)
    if head is None:
        return None
    probe = mx.array(PROBE_TOKENS)
    training = model.training
    model.eval()  # adapter dropout off, so both forwards are deterministic
    try:
        same = mx.array_equal(head(body(probe)), model(probe)).item()
    except Exception:  # noqa: BLE001 - any family the split does not fit gets full logits
        same = False
    finally:
        model.train(training)
    return head if same else None


class ResponseLogits:
    """`logits_at(inputs, positions)`: (B, L), (B, W) -> (B, W, vocab) logits of the outputs at
    those input positions, projecting only the gathered hidden states when the model allows."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.head = output_head(model)

    @property
    def projects_gathered(self) -> bool:
        return self.head is not None

    def __call__(self, inputs: mx.array, positions: mx.array) -> mx.array:
        index = positions[..., None]
        if self.head is None:
            return mx.take_along_axis(self.model(inputs), index, axis=1)
        hidden = mx.take_along_axis(self.model.model(inputs), index, axis=1)
        return self.head(hidden)
