"""RASFT refresh: select problems, roll out on the live policy, verify, weigh, queue the epoch's data."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from rasft_mlx.console.display import readable
from rasft_mlx.data.encoding import TrainingSequence, encode_prompt
from rasft_mlx.generation.completions import rank_seed
from rasft_mlx.rasft import gauges
from rasft_mlx.rasft.authors_schedule import (
    interval_refresh_due,
    route_once,
    select_for_refresh,
    solved_ids,
)
from rasft_mlx.rasft.gauges import mechanism_gauges, rollout_cost, rollout_weight_floor
from rasft_mlx.rasft.groups import build_group, rejection_sampling_group
from rasft_mlx.rasft.reference import response_logprobs, with_reference_logprobs
from rasft_mlx.rasft.refresh_record import ledger_row, refresh_table
from rasft_mlx.rasft.rollouts import (
    Rollout,
    gather_rollouts,
    generate_samples,
    own_problems,
    verify_samples,
)
from rasft_mlx.rasft.routing import (
    BandThresholds,
    calibrate_thresholds,
    route_by_nll,
    select_fraction,
)
from rasft_mlx.rasft.shared_rollouts import SharedRollouts
from rasft_mlx.rasft.step_cap import problems_within_room
from rasft_mlx.rasft.weights import ProblemWeights, no_rollout_weights, solvability_histogram
from rasft_mlx.runtime.fileio import atomic_write_text
from rasft_mlx.training.losses import LossSettings


class RasftSource:
    """Supplies each epoch's sequences: expert demos weighted by solvability plus correct rollouts."""

    def __init__(
        self, loaded, recipe, problems, experts, run_dir, console, metrics, shared_rollouts=None
    ):
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.recipe = recipe
        self.console = console
        self.metrics = metrics
        self.run_dir = run_dir
        self.shared = SharedRollouts(shared_rollouts, Path(run_dir).name, recipe)
        self.timings: Counter = Counter()
        self.refresh_count = 0
        self.epoch = 0  # the epoch whose sequences were handed out last
        self.ratio_counts = [0, 0, 0]  # sequences at the ratio's min, at its max, all; per period
        self.steps_observed = 0  # optimizer steps taken: none means the policy is the reference
        self.rng = np.random.default_rng(recipe.training.seed + 17)
        self.problems = {p.id: p for p in problems}
        self.prompts = {
            p.id: encode_prompt(self.tokenizer, p.question, recipe.data.system_prompt)
            for p in problems
        }
        self.thresholds: BandThresholds | None = None
        self.hard_pool: frozenset[str] = frozenset()
        self.authors = recipe.rasft.schedule == "authors"
        self.shuffle = not self.authors  # the authors train their queue in data order
        self.continuous_queue = self.authors  # one deque: refreshes append, micro-steps carry
        self.order = {s.problem_id: index for index, s in enumerate(experts)}
        self.pending: list[str] = []  # authors: mid-band problems waiting for the refresh
        self.flushed = False  # authors: the hard pool was trained a second time
        self.experts = {s.problem_id: s for s in experts}  # reference log-probs: see _prepare
        self.needs_reference = LossSettings(recipe.training.mode).needs_reference_logprobs
        self.prepared = not self.needs_reference  # rft's loss has no ratio: nothing to prepare

    def state_dict(self) -> dict:
        """The refresh state a checkpoint needs (the current queue is saved by the trainer)."""
        thresholds = self.thresholds.to_dict() if self.thresholds is not None else None
        return {
            "refresh_count": self.refresh_count,
            "epoch": self.epoch,
            "ratio_counts": list(self.ratio_counts),
            "steps_observed": self.steps_observed,
            "rng": self.rng.bit_generator.state,
            "hard_pool": sorted(self.hard_pool),
            "thresholds": thresholds,
            "pending": list(self.pending),
            "flushed": self.flushed,
        }

    def load_state_dict(self, state: dict) -> None:
        self.refresh_count = int(state["refresh_count"])
        self.epoch = int(state.get("epoch", 0))
        self.ratio_counts = list(state.get("ratio_counts", [0, 0, 0]))
        self.steps_observed = int(state.get("steps_observed", 1))  # older checkpoints: moved
        self.rng.bit_generator.state = state["rng"]
        self.hard_pool = frozenset(state["hard_pool"])
        self.pending = list(state.get("pending", []))
        self.flushed = bool(state.get("flushed", False))
        saved = state["thresholds"]
        self.thresholds = BandThresholds.from_dict(saved) if saved is not None else None

    @property
    def expert_count(self) -> int:
        return len(self.experts)

    def _prepare(self) -> None:
        """The demos' reference log-probs (the reference policy: the same whenever computed),
        once, in the first phase that needs them, so a stop request can interrupt it like any
        phase."""
        if self.prepared:
            return
        started = time.perf_counter()
        demos = list(self.experts.values())
        filled = with_reference_logprobs(self.model, demos, *self._batching)
        self.experts = {s.problem_id: s for s in filled}
        self.prepared = True
        self.timings["reference"] += time.perf_counter() - started

    @property
    def _batching(self) -> tuple[int, int]:
        return self.recipe.training.batch_size, self.recipe.training.bucket_multiple

    def observe_step(self, result) -> None:
        """Count the clipped-ratio hits of a training step, for the next refresh's record."""
        self.ratio_counts[0] += result.ratio_at_min
        self.ratio_counts[1] += result.ratio_at_max
        self.ratio_counts[2] += result.sequences
        self.steps_observed += 1

    def epoch_sequences(self, epoch: int, room: int | None = None) -> list[TrainingSequence]:
        """The epoch's sequences; `room`: how many the step cap leaves to train (None: no cap)."""
        self._prepare()
        self.epoch = epoch
        if self.authors:
            return self._authors_start()
        if self.warming_up:
            self.console.print(
                f"warm-up epoch {epoch + 1} of {self.recipe.rasft.warmup_epochs}: "
                "the expert demos at weight 1, no rollouts"
            )
            return [replace(s, weight=1.0) for s in self.experts.values()]
        return self.refresh(progress=epoch / max(self.recipe.training.epochs, 1), room=room)

    @property
    def warming_up(self) -> bool:
        """`rasft.warmup_epochs`: the first epochs train the demos alone (SFT with RASFT's loss,
        ratio to the start included), so the first refresh samples a model that has the format."""
        return self.epoch < self.recipe.rasft.warmup_epochs

    def refreshed_sequences(self, step: int, progress: float) -> list[TrainingSequence] | None:
        """The epoch schedule's refresh every refresh_every_steps; the authors' interval refresh
        (its sequences go after the current queue: `continuous_queue`)."""
        every = self.recipe.rasft.refresh_every_steps
        if self.authors:
            if not interval_refresh_due(step, every, self.pending):
                return None
            return self._authors_refresh(step, progress, "interval")
        if every <= 0 or step % every != 0 or self.warming_up:
            return None
        return self.refresh(progress=min(progress, 1.0))

    def continued_sequences(self, step: int, progress: float) -> list[TrainingSequence] | None:
        """The authors' schedule when its queue runs dry: the refresh, then the hard-pool flush."""
        if not self.authors:
            return None
        self._prepare()
        if self.pending:
            return self._authors_refresh(step, progress, "queue_dry")
        if self.hard_pool and not self.flushed:
            self.flushed = True
            flushed = sorted(self.hard_pool, key=self.order.__getitem__)
            self.hard_pool = frozenset()
            self.metrics.write({"event": "hard_pool_flush", "step": step, "problems": len(flushed)})
            self.console.print(f"hard pool: training {len(flushed)} demos a second time")
            return [replace(self.experts[pid], weight=1.0) for pid in flushed]
        return None

    def _demo_nll(self, ids: list[str]) -> list[float]:
        """The policy's mean NLL per demo. Before any step it is the reference (a fresh LoRA adds
        exactly zero; not DoRA): the cached reference log-probs serve."""
        demos, unmoved = [self.experts[i] for i in ids], self.steps_observed == 0
        if unmoved and self.recipe.lora.type != "dora" and demos[0].reference_logprobs is not None:
            logprobs = [d.reference_logprobs for d in demos]
        else:
            logprobs = response_logprobs(self.model, demos, *self._batching, label="demo NLL")
        return [-float(np.mean(v)) for v in logprobs]

    def _authors_start(self) -> list[TrainingSequence]:
        """Route every problem once by the starting policy's demo NLL; queue all but the mid band."""
        config = self.recipe.rasft
        ids = list(self.experts)  # data order
        started = time.perf_counter()
        nll = self._demo_nll(ids)
        self.timings["reference"] += time.perf_counter() - started
        sample = self.rng.permutation(len(nll))[: config.calibration_size]
        self.thresholds = calibrate_thresholds([nll[i] for i in sample], config)
        window = (self.thresholds.mid_start[0], self.thresholds.mid_start[1])
        pairs = list(zip(ids, nll, strict=True))
        routing = route_once(pairs, self.thresholds, window, config.route_chunk_size)
        self.pending, self.hard_pool = list(routing.pending), frozenset(routing.hard_pool)
        self.metrics.write({"event": "route", "step": 0, **routing.counts})
        self.console.print(f"routed by demo NLL: {readable(routing.counts)}")
        return [replace(self.experts[pid], weight=1.0) for pid in routing.queue]

    def _authors_refresh(self, step: int, progress: float, trigger: str) -> list[TrainingSequence]:
        """The refresh of the waiting mid band and a probe of the hard pool; returns the queue:
        the demos queued directly (A = 1), then each rolled-out problem's demo and rollouts."""
        config = self.recipe.rasft
        self._prepare()
        self.refresh_count += 1
        horizon = self.recipe.training.lr_schedule_steps  # their window: step / total_train_steps
        progress = step / horizon if horizon else progress
        pool = sorted(self.hard_pool, key=self.order.__getitem__)
        selection = select_for_refresh(
            self.pending,
            pool,
            self._demo_nll,
            self.thresholds,
            progress,
            config.selection_fraction,
            config.hard_probe_fraction,
            self.rng,
        )
        self.pending, self.hard_pool = [], frozenset(selection.hard_pool)
        rolled = sorted(selection.rollout_ids, key=self.order.__getitem__)
        context = {"step": step, "trigger": trigger}
        weights, rollouts = self._roll_out(rolled, selection.counts, context)
        queue = [replace(self.experts[pid], weight=1.0) for pid in selection.direct_ids]
        for pid in rolled:
            queue.append(replace(self.experts[pid], weight=weights[pid].expert_weight))
            queue.extend(s for s in rollouts if s.problem_id == pid)
        return queue

    def _select(self, progress: float) -> tuple[list[str], dict]:
        config = self.recipe.rasft
        ids = sorted(self.experts)
        if config.selection == "all":
            return ids, {"selected": len(ids)}
        if config.selection == "fraction":
            chosen = select_fraction(ids, config.selection_fraction, self.rng)
            return chosen, {"selected": len(chosen)}
        nll = self._demo_nll(ids)
        problem_nll = dict(zip(ids, nll, strict=True))
        if self.thresholds is None:
            sample = self.rng.permutation(len(nll))[: config.calibration_size]
            self.thresholds = calibrate_thresholds([nll[i] for i in sample], config)
        decision = route_by_nll(
            problem_nll, self.thresholds, progress, config, self.rng, self.hard_pool
        )
        self.hard_pool = decision.hard_pool
        routes = {
            "easy": len(decision.easy_ids),
            "mid_rollouts": len(decision.rollout_ids) - len(decision.probed_ids),
            "hard_probes": len(decision.probed_ids),
            "hard": len(decision.hard_ids),
            "other": len(decision.other_ids),
        }
        return list(decision.rollout_ids), routes

    def _rollout_sequence(self, rollout: Rollout, weight: float) -> TrainingSequence | None:
        prompt = self.prompts[rollout.problem_id]
        tokens = prompt + list(rollout.token_ids) + [self.tokenizer.eos_token_id]
        if len(tokens) > self.recipe.data.max_seq_len:
            return None
        return TrainingSequence(
            rollout.problem_id, tuple(tokens), len(prompt), weight=weight, source="rollout"
        )

    def refresh(self, progress: float, room: int | None = None) -> list[TrainingSequence]:
        """The epoch schedule's refresh: every demo (weighted by its problem's group) and the
        correct rollouts of the selected problems; under a step cap that leaves `room` sequences
        (`rasft.trim_capped_refresh`), only those of `room` problems drawn at random."""
        self.refresh_count += 1
        selected, routes = self._select(progress)
        kept, context = None, None
        if self.recipe.rasft.trim_capped_refresh:
            kept = problems_within_room(list(self.experts), room, self.rng)
        if kept is not None:
            selected = [pid for pid in selected if pid in kept]
            context = {"step_cap": {"room": room, "problems_kept": len(kept)}}
            self.console.print(
                f"the step cap leaves room for {room} sequences: this refresh keeps {len(kept)} "
                f"of {len(self.experts)} problems, drawn at random (rasft.trim_capped_refresh)"
            )
        weights, rollout_sequences = self._roll_out(selected, routes, context)
        experts = [
            replace(s, weight=weights[pid].expert_weight if pid in weights else 1.0)
            for pid, s in self.experts.items()
            if kept is None or pid in kept
        ]
        return experts + rollout_sequences

    def _roll_out(self, selected: list[str], routes: dict, context: dict | None = None):
        """Sample, verify, group and weigh the selected problems; log the refresh. Returns their
        weights and the trained rollouts (reference log-probs filled in), in `selected` order.
        Problems of the hard pool that now have a correct rollout leave it."""
        problems = [self.problems[i] for i in selected]
        own = own_problems(problems, self.prompts, self.recipe.rollout)  # over ranks: a share
        started = time.perf_counter()
        seed = rank_seed(self.recipe.training.seed * 1000 + self.refresh_count)
        config, label = self.recipe.rollout, f"rollouts (refresh {self.refresh_count})"
        inputs = (own, self.prompts, config, seed)
        decode = partial(generate_samples, self.model, self.tokenizer, *inputs, label=label)
        samples, stats, reused = self.shared.draw(
            self.model, *inputs, self.experts, partial(decode, demos=self.experts)
        )
        rollout_seconds = time.perf_counter() - started
        self.timings["rollout"] += rollout_seconds
        started = time.perf_counter()
        graded = self.recipe.rasft.grade_truncated
        verified = {p.id: verify_samples(p, samples[p.id], graded) for p in own}
        self.timings["verify"] += time.perf_counter() - started
        verified, stats, owners = gather_rollouts(verified, stats, problems)

        weights: dict[str, ProblemWeights] = {}
        dropped: Counter = Counter()
        rollout_sequences, ledger, trained_tokens, trained_weights = [], [], 0, []
        for problem in problems:
            group = build_group(verified[problem.id], self.recipe.rasft)
            if self.recipe.training.mode == "rft":
                group = rejection_sampling_group(group, verified[problem.id])
            weights[problem.id] = group.weights
            dropped += group.dropped
            trained = {}
            for rollout, weight in zip(group.trained, group.weights.rollout_weights, strict=True):
                sequence = self._rollout_sequence(rollout, weight)
                if sequence is None:
                    dropped["too_long"] += 1
                    continue
                rollout_sequences.append(sequence)
                trained[rollout.sample] = weight
                trained_tokens += len(rollout.token_ids)
            trained_weights.extend(trained.values())
            ledger.append(ledger_row(problem, verified[problem.id], group, trained))
            if owners:  # over several ranks: which one decoded this problem
                ledger[-1]["rank"] = owners[problem.id]
        solved = solved_ids({pid: w.route for pid, w in weights.items()}, self.authors)
        self.hard_pool = frozenset(self.hard_pool - solved)

        if self.needs_reference:
            started = time.perf_counter()
            rollout_sequences = with_reference_logprobs(
                self.model, rollout_sequences, *self._batching
            )
            self.timings["reference"] += time.perf_counter() - started
        self._write_ledger(ledger)
        every = {pid: no_rollout_weights() for pid in self.experts} | weights
        record = self._record(problems, verified, every, routes, dropped, stats, trained_weights)
        generated_tokens = sum(len(r.token_ids) for p in problems for r in verified[p.id])
        record["cost"] = rollout_cost(rollout_seconds, generated_tokens, trained_tokens)
        if reused:  # another run of the comparison decoded these samples
            record["rollouts_reused"] = reused
        self.metrics.write(record | (context or {}))
        self._print(record)
        return weights, rollout_sequences

    def _write_ledger(self, rows: list[dict]) -> None:
        path = self.run_dir / "rollouts" / f"refresh-{self.refresh_count:03d}.jsonl"
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))

    def _record(self, problems, verified, weights, routes, dropped, stats, trained_weights) -> dict:
        """`trained_weights`: the weights of the rollouts that train (a correct one too long for
        data.max_seq_len does not)."""
        k, trained = self.recipe.rollout.k, len(trained_weights)
        correct_counts = [sum(r.correct for r in verified[p.id]) for p in problems]
        expert = np.array([w.expert_weight for w in weights.values()])
        rollout = np.array(trained_weights or [0.0])
        generated = sum(len(verified[p.id]) for p in problems)
        return {
            "event": "refresh",
            "refresh": self.refresh_count,
            "problems_selected": len(problems),
            "rollouts_generated": generated,
            "rollouts_trained": trained,
            "mechanism": mechanism_gauges(
                correct_counts, k, generated, trained_weights, self.weight_floor
            ),
            "generation_tokens_per_second": round(stats.tokens_per_second, 1),
            "solvability_histogram": solvability_histogram(correct_counts, k),
            "routes": routes,
            "weight_routes": dict(Counter(w.route for w in weights.values())),
            "expert_weight": gauges.summary_stats(expert),
            "rollout_weight": gauges.summary_stats(rollout) if trained else None,
            "dropped": dict(dropped),
            "hard_pool": len(self.hard_pool),  # after this refresh's probes and solved problems
            "ratio_clip_since_last_refresh": self._ratio_shares(),
            "timings": dict(self.timings),
        }

    @property
    def weight_floor(self) -> float | None:
        """The rollout weight floor of this run's weighting (rft and the linear rule have none)."""
        rasft = self.recipe.rasft
        if self.recipe.training.mode == "rft" or rasft.weighting != "reference":
            return None
        return rollout_weight_floor(rasft)

    def _ratio_shares(self) -> dict | None:
        at_min, at_max, sequences = self.ratio_counts
        self.ratio_counts = [0, 0, 0]
        if sequences == 0:
            return None
        return {
            "at_min": round(at_min / sequences, 4),
            "at_max": round(at_max / sequences, 4),
            "sequences": sequences,
        }

    def _print(self, record: dict) -> None:
        self.console.print(refresh_table(record, self.weight_floor))
