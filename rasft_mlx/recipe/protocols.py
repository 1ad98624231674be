"""Recipe presets: `protocol: authors` fills every key the RASFT authors fix with their value.

The preset fills only keys the recipe (or `--set`) leaves out, so a recipe can still change one;
`protocol_report` says which keys hold the protocol's value and which the recipe changed.
Sources (github zjd1sq/RASFT at eeac7f8; docs/FIDELITY.md has the line numbers) are in
the comments.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

PROTOCOLS = ("project", "authors")

AUTHORS: dict[str, dict] = {
    "training": {
        "mode": "rasft",
        "epochs": 1,  # continuous_train: one pass over the data
        "adam_bias_correction": True,  # torch.optim.AdamW
        "weight_decay": 0.0,  # --weight_decay
        "grad_clip": 1.0,  # --max_grad_norm
        "warmup_steps": 4,  # rasft-spec.md section 5
        "lr_schedule_steps": 1000,  # --total_train_steps: cosine horizon
        "loss_normalization": "micro_batch_mean",  # loss / grad_accum_steps per micro-batch
        "dft_factor": True,  # compute_weighted_loss: weight includes p_new
    },
    "rollout": {
        "k": 3,  # --rollout_num
        "temperature": 0.9,  # --rollout_temperature
        "top_p": 0.95,  # --rollout_top_p
        "repetition_penalty": 1.1,  # --repetition_penalty
        "repetition_scope": "all",  # vLLM: prompt and output tokens
        "max_new_tokens": 1024,  # --rollout_max_tokens
        "max_new_tokens_per_demo_token": 0.0,  # off: one --rollout_max_tokens for every problem
    },
    "rasft": {
        "schedule": "authors",  # continuous_train / apply_refresh
        "selection": "nll_band",  # route_chunk_by_difficulty
        "weighting": "reference",
        "selection_fraction": 0.35,  # --main_rollout_ratio
        "hard_probe_fraction": 0.03,  # --hard_probe_ratio
        "route_chunk_size": 128,  # README run: --raw_chunk_size 128 (argparse: 64)
        "calibration_size": 1000,  # --calibration_sample_size
        "easy_quantile": 0.10,  # --easy_floor_q
        "mid_window_start": [0.20, 0.45],  # --start_low_q, --start_high_q
        "mid_window_end": [0.50, 0.75],  # --end_low_q, --end_high_q
        "hard_quantile": 0.90,  # README run: --hard_probe_ceiling_q 0.90 (argparse: 0.95)
        "refresh_every_steps": 32,  # --refresh_interval_steps (and when the queue runs dry)
        "r_min": 1.0,  # --expert_reward_min
        "r_max": 3.0,  # --expert_reward_max
        "pos_reward": 1.0,
        "neg_reward": 0.0,
        "adv_alpha": 0.4,  # --adv_alpha
        "max_negative_keep": 3,  # --max_negative_keep
        "rollout_adv_coef": 0.25,
        "rollout_adv_floor": 0.02,
        "rollout_adv_cap": 0.15,
        "dedup_jaccard": 0.82,  # dedupe_samples_by_ngram
        "short_text_jaccard": "authors",  # ngram_jaccard: empty 3-gram sets
        "negative_similarity_max": 0.88,  # classify_and_filter_rollout_samples_unified
        "quality_filters": True,
        "grade_truncated": True,  # T:775-779: a cut sample is graded (no finish_reason, T:905)
        "ratio_min": 0.4,  # ratio_clip = clamp(ratio, 0.4, 1.2)
        "ratio_max": 1.2,
    },
    "eval": {
        "samples": 16,  # eval/math_evaluation/eval.sh: n_sampling 16
        "temperature": 1.0,
        "top_p": 1.0,
        "max_new_tokens": 4096,
    },
}

PRESETS = {"project": {}, "authors": AUTHORS}


def preset_leaves(protocol: str) -> Iterator[tuple[str, object]]:
    """(dotted key, value) of every key the protocol sets."""
    for section, values in PRESETS[protocol].items():
        for key, value in values.items():
            yield f"{section}.{key}", value


def apply_protocol(data: dict) -> dict:
    """The recipe mapping with the protocol's values under every key it leaves out."""
    protocol = data.get("protocol", "project")
    if protocol not in PRESETS:
        return data  # the field check names the key and its choices
    merged = copy.deepcopy(data)
    for section, values in PRESETS[protocol].items():
        target = merged.get(section)
        if target is None:
            target = merged[section] = {}
        if not isinstance(target, dict):
            return data  # the section's own error is clearer
        for key, value in values.items():
            target.setdefault(key, copy.deepcopy(value))
    return merged


def protocol_report(recipe) -> tuple[list[str], list[str]]:
    """(keys holding the protocol's value, 'key: recipe value (protocol value)' for the others)."""
    held, changed = [], []
    for path, value in preset_leaves(recipe.protocol):
        section, key = path.split(".")
        actual = getattr(getattr(recipe, section), key)
        expected = tuple(value) if isinstance(value, list) else value
        if actual == expected:
            held.append(path)
        else:
            changed.append(f"{path}: {actual!r} (protocol {expected!r})")
    return held, changed
