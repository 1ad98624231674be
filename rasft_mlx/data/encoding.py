"""Chat-template prompts and token sequences with the prompt masked out of the loss."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rasft_mlx.data.problem import Problem

FALLBACK_TEMPLATE = "{system}\n\nQuestion: {question}\nAnswer: "


@dataclass(frozen=True)
class TrainingSequence:
    """One trained sequence: prompt + response tokens; only the response is in the loss."""

    problem_id: str
    tokens: tuple[int, ...]
    prompt_length: int
    weight: float = 1.0
    source: str = "expert"
    reference_logprobs: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def response_length(self) -> int:
        return len(self.tokens) - self.prompt_length


def prompt_messages(question: str, system_prompt: str) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": question}]


def encode_prompt(tokenizer, question: str, system_prompt: str) -> list[int]:
    """Prompt tokens ending with the assistant turn's opening, exactly as generation sees them."""
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            prompt_messages(question, system_prompt), add_generation_prompt=True, tokenize=False
        )
    else:
        rendered = FALLBACK_TEMPLATE.format(system=system_prompt, question=question)
    return list(tokenizer.encode(rendered, add_special_tokens=False))


def encode_response(tokenizer, response: str) -> list[int]:
    """Response tokens followed by the end-of-turn token, so the model learns to stop."""
    return list(tokenizer.encode(response, add_special_tokens=False)) + [tokenizer.eos_token_id]


@dataclass
class EncodingReport:
    kept: int = 0
    skipped_too_long: int = 0
    skipped_ids: list[str] = field(default_factory=list)


def encode_expert_sequences(
    tokenizer, problems: list[Problem], system_prompt: str, max_seq_len: int
) -> tuple[list[TrainingSequence], EncodingReport]:
    """Prompt + expert solution for each problem; rows longer than max_seq_len are skipped."""
    report = EncodingReport()
    sequences = []
    for problem in problems:
        prompt = encode_prompt(tokenizer, problem.question, system_prompt)
        response = encode_response(tokenizer, problem.solution)
        if len(prompt) + len(response) > max_seq_len:
            report.skipped_too_long += 1
            report.skipped_ids.append(problem.id)
            continue
        sequences.append(
            TrainingSequence(problem.id, tuple(prompt + response), prompt_length=len(prompt))
        )
        report.kept += 1
    return sequences, report
