"""Recipe schema of the eval and output sections: what is measured during and after training
(held-out pass@1, validation, drift, extra sets), and what a run writes (checkpoints, the best
adapters, the report, trackers)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rasft_mlx.recipe.typed_fields import field_meta as _range

TRACKERS = ("wandb", "tensorboard", "trackio")
KEEP_BEST = ("none", "val_loss", "val_pass_at_1")
AUTO_ROWS_HELP = "sequences decoded together; 0 = as many as half the free memory holds (<= 512)"


@dataclass(frozen=True)
class EvalConfig:
    limit: int | None = field(default=None, metadata=_range(1))
    samples: int = field(default=1, metadata=_range(1, help="K for avg@K (1 = greedy only)"))
    temperature: float = field(default=1.0, metadata=_range(0.0))
    top_p: float = field(default=1.0, metadata=_range(0.0, 1.0, lo_open=True))
    max_new_tokens: int = field(default=512, metadata=_range(1))
    batch_size: int = field(default=0, metadata=_range(0, help=AUTO_ROWS_HELP))
    before_training: bool = field(
        default=False, metadata=_range(help="also evaluate the starting model (eval-epoch-0)")
    )
    drift_problems: int = field(
        default=0,
        metadata=_range(
            0,
            help="after training, KL(ref || policy) and the NLL rise on the starting model's "
            "greedy answers to the first N test problems (summary.json 'drift'); 0 = off",
        ),
    )
    extra_sets: tuple[str, ...] = field(
        default=(),
        metadata=_range(
            help="more test sets evaluated after training (and before, with before_training): "
            "named benchmarks, files, or synthetic-ood",
        ),
    )
    val_every: int = field(
        default=0,
        metadata=_range(
            0,
            help="every N optimizer steps and at the end of training: the mean token "
            "cross-entropy of the validation set's expert solutions (data.validation or "
            "data.validation_fraction; metrics.jsonl 'validation'); 0 = off",
        ),
    )
    val_pass_at_1_problems: int = field(
        default=0,
        metadata=_range(
            0,
            help="with val_every: also the greedy pass@1 on the first N validation problems at "
            "the same moments; 0 = off",
        ),
    )


@dataclass(frozen=True)
class OutputConfig:
    dir: str = field(default="runs/{name}", metadata=_range(help="run directory; {name} expands"))
    name: str = "run"
    save_every: int = field(
        default=0, metadata=_range(0, help="checkpoint every N steps; 0 = epochs")
    )
    keep_checkpoints: int = field(
        default=2, metadata=_range(1, help="how many of the newest checkpoints to keep")
    )
    report: bool = field(
        default=True,
        metadata=_range(help="write RUN_DIR/report.html after each epoch and at the end"),
    )
    report_to: tuple[str, ...] = field(
        default=(),
        metadata=_range(
            choices=TRACKERS,
            help="experiment trackers that get every metrics.jsonl record: " + ", ".join(TRACKERS),
        ),
    )
    keep_best: str = field(
        default="none",
        metadata=_range(
            choices=KEEP_BEST,
            help="save the adapters to RUN_DIR/adapters-best whenever this validation figure "
            "improves (summary.json 'best'); needs eval.val_every (val_pass_at_1: also "
            "eval.val_pass_at_1_problems)",
        ),
    )
