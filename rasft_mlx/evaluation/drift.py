"""Drift from the starting model: on the starting model's own greedy answers to held-out prompts,
the mean per-token KL(pi_ref || pi_theta) over the full vocabulary and the mean rise in NLL
(log pi_ref(y) - log pi_theta(y)). The reference is the starting policy (`reference_policy`: the
adapters off, or a full fine-tune's starting weights).
The answers are the same for every run of one model and settings, so they can be kept in a file
(`save_answers` / `load_answers`, keyed by `answers_identity`) and generated once per comparison."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from rasft_mlx.console.progress import check, phase
from rasft_mlx.data.encoding import TrainingSequence, encode_prompt
from rasft_mlx.data.problem import Problem, problems_digest
from rasft_mlx.generation.completions import SamplingSettings, generate_completions
from rasft_mlx.generation.lanes import (
    default_lanes,
    forward_in_lanes,
    lane_blas_threads,
    lane_streams,
)
from rasft_mlx.models.adapters import dropout_mode, reference_policy
from rasft_mlx.models.response_logits import ResponseLogits
from rasft_mlx.runtime.fileio import atomic_write_text
from rasft_mlx.training.batching import collate
from rasft_mlx.training.checkpoint import (
    CheckpointError,
    sequences_from_records,
    sequences_to_records,
)
from rasft_mlx.training.losses import reference_kl, token_logprobs


@dataclass(frozen=True)
class DriftReport:
    kl_ref_policy: float  # mean over answer tokens of KL(pi_ref || pi_theta), full vocabulary
    nll_increase: float  # mean over answer tokens of log pi_ref(y_t) - log pi_theta(y_t)
    problems: int
    tokens: int

    def as_dict(self) -> dict:
        return asdict(self)


def reference_answers(
    model,
    tokenizer,
    problems: list[Problem],
    system_prompt: str,
    max_new_tokens: int,
    batch_size: int,
) -> list[TrainingSequence]:
    """The starting model's greedy answers (the reference policy) as prompt + answer sequences."""
    prompts = [encode_prompt(tokenizer, p.question, system_prompt) for p in problems]
    settings = SamplingSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
    with reference_policy(model):
        completions, _ = generate_completions(
            model, tokenizer, prompts, settings, label="drift: starting model's answers"
        )
    return [
        TrainingSequence(problem.id, tuple(prompt + list(done.token_ids)), len(prompt))
        for problem, prompt, done in zip(problems, prompts, completions, strict=True)
        if done.token_ids
    ]


def answers_identity(
    model_settings: dict,
    problems: list[Problem],
    system_prompt: str,
    max_new_tokens: int,
    batch_size: int,
) -> dict:
    """What decides the starting model's answers (batch size too: padding moves float sums)."""
    identity = {
        "model": model_settings,
        "problems": problems_digest(problems),
        "system_prompt": system_prompt,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
    }
    return json.loads(json.dumps(identity))  # as it reads back from the file


def save_answers(path: Path, identity: dict, sequences: list[TrainingSequence]) -> None:
    records, _ = sequences_to_records(sequences)  # the checkpoint's queue format, no log-probs
    atomic_write_text(path, json.dumps({"identity": identity, "answers": records}) + "\n")


def load_answers(path: Path, identity: dict) -> list[TrainingSequence] | None:
    """The answers kept in `path` when they were made under `identity`, else None (no file, an
    unreadable one, or other settings: the caller generates them again)."""
    try:
        saved = json.loads(path.read_text())
        if saved["identity"] != identity:
            return None
        return sequences_from_records(saved["answers"], np.zeros((0,), dtype=np.float32))
    except (OSError, ValueError, KeyError, TypeError, CheckpointError):
        return None


def drift_statistics(
    kl: np.ndarray, log_ratio: np.ndarray, mask: np.ndarray
) -> tuple[float, float]:
    """Token means of KL and of the log-ratio over the unmasked positions (all rows pooled)."""
    count = mask.sum()
    if count == 0:
        return 0.0, 0.0
    return float((kl * mask).sum() / count), float((log_ratio * mask).sum() / count)


def measure_drift(
    model,
    sequences: list[TrainingSequence],
    batch_size: int,
    bucket_multiple: int = 32,
    lanes: int | None = None,
) -> DriftReport:
    """KL(pi_ref || pi_theta) and the NLL rise on `sequences`' answer tokens, dropout off; each
    batch's rows split over decode lanes on a CPU (`lanes` None: `default_lanes`), as the
    reference log-probs are (`rasft/reference.py`)."""
    logits_at = ResponseLogits(model)
    lanes = default_lanes(model) if lanes is None else lanes
    streams = lane_streams(lanes)

    def share_drift(share: list[int]) -> tuple[mx.array, mx.array, mx.array]:
        batch = collate([sequences[i] for i in share], len(share), bucket_multiple)
        policy = logits_at(batch.inputs, batch.positions)
        with reference_policy(model):
            reference = logits_at(batch.inputs, batch.positions)
        log_ratio = token_logprobs(reference, batch.targets) - token_logprobs(policy, batch.targets)
        return reference_kl(policy, reference), log_ratio, batch.mask

    kl_parts, ratio_parts, mask_parts = [], [], []
    with (
        dropout_mode(model, False),
        lane_blas_threads(lanes),
        phase("drift", len(sequences)) as reporter,
    ):
        for start in range(0, len(sequences), batch_size):
            check("drift")
            rows = list(range(start, min(start + batch_size, len(sequences))))
            for _, (kl, log_ratio, mask) in forward_in_lanes(rows, streams, share_drift):
                kl_parts.append(np.array(kl).ravel())
                ratio_parts.append(np.array(log_ratio).ravel())
                mask_parts.append(np.array(mask, dtype=np.float64).ravel())
            reporter.advance(len(rows))
    if not sequences:
        return DriftReport(0.0, 0.0, 0, 0)
    mask = np.concatenate(mask_parts)
    kl_mean, nll_rise = drift_statistics(
        np.concatenate(kl_parts), np.concatenate(ratio_parts), mask
    )
    return DriftReport(kl_mean, nll_rise, len(sequences), int(mask.sum()))
