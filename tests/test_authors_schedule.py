"""The authors' schedule: routing once, the refresh's choices, and a whole run under it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from rich.console import Console

from rasft_mlx.commands.train import TrainingInterrupted, run_training
from rasft_mlx.experiments.plan import authors_refresh_steps
from rasft_mlx.rasft.authors_schedule import (
    interval_refresh_due,
    refresh_step,
    route_once,
    select_for_refresh,
    solved_ids,
)
from rasft_mlx.rasft.routing import calibrate_thresholds
from rasft_mlx.rasft.weights import problem_weights
from rasft_mlx.recipe.config import RasftConfig, load_recipe, recipe_from_dict
from rasft_mlx.recipe.protocols import AUTHORS, protocol_report
from rasft_mlx.training.step_plan import (
    carried_batches,
    queue_rest,
    step_groups,
    trainable_groups,
    untrained_part,
)

NLL = {f"p{i:03d}": float(i) for i in range(1, 101)}  # quantile q sits at NLL ~ 1 + 99 q
CONFIG = RasftConfig(hard_quantile=0.95)


def thresholds():
    return calibrate_thresholds(list(NLL.values()), CONFIG)


def test_route_once_queues_all_but_the_mid_band_in_data_order():
    t = thresholds()  # easy 10.9, window [20.8, 45.55], ceiling 95.05
    order = sorted(NLL, reverse=True)  # a data order that is not the id order
    routing = route_once([(pid, NLL[pid]) for pid in order], t, t.mid_start)
    assert routing.pending == tuple(p for p in order if 20.8 <= NLL[p] <= 45.55)
    assert routing.hard_pool == tuple(p for p in order if 45.55 < NLL[p] <= 95.05)
    assert routing.queue == tuple(p for p in order if p not in routing.pending)
    assert routing.counts == {"easy": 10, "mid_pending": 25, "hard": 50, "other": 15}


def test_route_once_in_chunks_queues_easy_then_hard_then_the_rest():
    """T:1501-1517: per chunk of --raw_chunk_size problems, the easy demos are enqueued, then
    the hard ones, then the rest; the mid band waits in data order."""
    t = thresholds()
    order = ["p050", "p005", "p015", "p030", "p099", "p003", "p060", "p025"]
    routing = route_once([(pid, NLL[pid]) for pid in order], t, t.mid_start, chunk_size=4)
    # chunk 1: hard p050, easy p005, other p015, mid p030; chunk 2: other p099, easy p003,
    # hard p060, mid p025
    assert routing.queue == ("p005", "p050", "p015", "p003", "p060", "p099")
    assert routing.pending == ("p030", "p025")
    assert recipe_from_dict({"protocol": "authors"}).rasft.route_chunk_size == 128


def test_refresh_draws_ceil_35_percent_and_probes_int_3_percent_rescored():
    t = thresholds()
    pending = [f"p{i:03d}" for i in range(21, 46)]  # 25 waiting
    pool = [f"p{i:03d}" for i in range(46, 96)]  # 50 in the pool: int(1.5) = 1 probe
    rescored = {}

    def score(ids):
        rescored.update(dict.fromkeys(ids, 5.0))  # the probe is now easy: below the window
        return [5.0] * len(ids)

    rng = np.random.default_rng(0)
    choice = select_for_refresh(pending, pool, score, t, 0.0, 0.35, 0.03, rng)
    drawn = [p for p in choice.rollout_ids if p in pending]
    assert len(drawn) == math.ceil(25 * 0.35) == 9
    assert set(choice.direct_ids) == (set(pending) - set(drawn)) | set(rescored)
    assert len(rescored) == 1 and not set(rescored) & set(choice.rollout_ids)
    assert set(choice.hard_pool) == set(pool) - set(rescored)  # released from the pool
    assert choice.counts["probe_released"] == 1


@pytest.mark.parametrize(("probe_nll", "outcome"), [(50.0, "probe_rollouts"), (99.0, "probe_kept")])
def test_probes_in_the_band_get_rollouts_and_above_the_ceiling_stay(probe_nll, outcome):
    t = thresholds()
    rng = np.random.default_rng(1)
    choice = select_for_refresh(
        [], ["p060"], lambda ids: [probe_nll] * len(ids), t, 0.0, 0.35, 0.03, rng
    )
    assert choice.counts[outcome] == 1
    assert choice.hard_pool == ("p060",)
    assert choice.rollout_ids == (("p060",) if outcome == "probe_rollouts" else ())


def test_a_refresh_inside_an_epoch_keeps_only_the_demos_still_ahead():
    class Seq:
        def __init__(self, pid, source="expert"):
            self.problem_id, self.source = pid, source

    sequences = [Seq("a"), Seq("b"), Seq("c"), Seq("d")]
    groups = [[[0, 1]], [[2]], [[3]]]  # steps: {a, b}, {c}, {d}; one step done
    refreshed = [Seq("a"), Seq("b"), Seq("c"), Seq("d"), Seq("a", "rollout")]
    kept = untrained_part(sequences, groups, 1, refreshed)
    assert [(s.problem_id, s.source) for s in kept] == [
        ("c", "expert"),
        ("d", "expert"),
        ("a", "rollout"),
    ]


def test_the_window_slides_between_nll_values_as_theirs_does():
    """T:1053-1056: `low = (1 - alpha) * thresholds["start_low"] + alpha * thresholds["end_low"]`,
    NLLs; with NLLs that are not linear in the quantile, halfway is not the NLL at q 0.35."""
    t = calibrate_thresholds([float(i * i) for i in range(1, 101)], CONFIG)
    halfway = (t.mid_start[0] + t.mid_end[0]) / 2  # 1491.65; the NLL at q 0.35 is 1271.15
    assert t.nll_at(0.35) < 1400.0 < halfway
    rng = np.random.default_rng(0)
    choice = select_for_refresh([], ["p"], lambda ids: [1400.0], t, 0.5, 0.35, 0.03, rng)
    assert choice.counts["probe_released"] == 1 and choice.hard_pool == ()


def test_the_authors_interval_refresh_fires_every_32_steps_while_mid_problems_wait():
    """train_RASFT.py L1521-1524: `optimizer_step > 0 and optimizer_step %
    args.refresh_interval_steps == 0 and len(pending_mid) > 0`, --refresh_interval_steps 32."""
    every = recipe_from_dict({"protocol": "authors"}).rasft.refresh_every_steps
    assert every == 32
    due = [step for step in range(0, 200) if interval_refresh_due(step, every, ["p001"])]
    assert due == [32, 64, 96, 128, 160, 192]
    assert not any(interval_refresh_due(step, every, []) for step in range(200))
    assert not interval_refresh_due(32, 0, ["p001"])
    # Routed once, the first refresh takes the whole mid band: it fires after step 32 when the
    # first queue lasts that long, else when that queue runs dry.
    assert refresh_step(176, 32) == 32 and refresh_step(32, 32) == 32
    assert refresh_step(24, 32) == 24 and refresh_step(24, 0) == 24


def test_the_plan_shows_the_authors_refresh_step():
    gsm8k = recipe_from_dict(
        {"protocol": "authors", "training": {"batch_size": 2, "grad_accumulation": 16}}
    )
    assert authors_refresh_steps(7473, gsm8k) == (32,)  # the first queue: ~175 steps
    assert authors_refresh_steps(1000, gsm8k) == (23,)  # 750 demos: dry after 23 full steps
    short = recipe_from_dict({"protocol": "authors", "training": {"max_steps": 20}})
    assert authors_refresh_steps(7473, short) == ()


def test_k_of_k_solved_problems_stay_in_the_authors_hard_pool():
    """Their filter returns None for a group of equal rewards (T:821-822: K of K correct gives
    the expert r_min = 1 = the positives' reward), so the problem is queued as a demo and kept in
    the pool (T:1256-1258); only problems whose rollouts were queued leave it (T:1339-1340)."""
    solved = problem_weights(3, 0, RasftConfig(), num_sampled=3)
    assert solved.route == "fallback_degenerate"
    partly = problem_weights(2, 1, RasftConfig(), num_sampled=3)
    routes = {"a": partly.route, "b": solved.route, "c": "fallback_unsolved", "d": "fallback_empty"}
    assert solved_ids(routes, authors=True) == {"a"}
    assert solved_ids(routes, authors=False) == {"a", "b"}  # the project's schedule


def test_a_refresh_of_the_authors_queue_goes_after_the_rest_of_it():
    sequences = ["a", "b", "c", "d", "e"]
    groups = [[[0, 1]], [[2, 3]], [[4]]]  # one step done
    assert queue_rest(sequences, groups, 1) + ["x"] == ["c", "d", "e", "x"]


def test_the_authors_micro_steps_run_across_refills():
    """Their micro-step counter never restarts (T:1586-1589: `micro_step % args.grad_accum_steps
    == 0`): a queue's last short step is not taken; its micro-batches (the last one short, as
    `take_n = min(micro_batch, len(expert_queue))` pops it, T:1572) open the next queue's."""

    class Training:
        batch_size, grad_accumulation = 2, 3

    class Seq(str):
        tokens = (1, 2)

    queue = [Seq(c) for c in "abcdefg"]
    groups = step_groups(queue, Training, None, shuffle=False)  # 4 micro-batches
    assert groups == [[[0, 1], [2, 3], [4, 5]], [[6]]]
    assert trainable_groups(groups, 3, carry=True) == 1
    assert trainable_groups(groups, 3, carry=False) == 2
    assert carried_batches(queue, groups, 1) == [["g"]]
    refill = [Seq(c) for c in "gxyz"]
    assert step_groups(refill, Training, None, False, lead_sizes=[1]) == [[[0], [1, 2], [3]]]


def test_the_authors_protocol_fills_only_the_keys_a_recipe_leaves_out():
    recipe = recipe_from_dict({"protocol": "authors", "rollout": {"k": 2}})
    assert recipe.rasft.schedule == "authors" and recipe.rollout.repetition_scope == "all"
    assert recipe.training.lr_schedule_steps == 1000 and recipe.eval.samples == 16
    held, changed = protocol_report(recipe)
    assert changed == ["rollout.k: 2 (protocol 3)"]
    assert len(held) == sum(len(v) for v in AUTHORS.values()) - 1
    assert recipe_from_dict({}).rasft.schedule == "epochs"


def authors_recipe(model_dir, tmp_path, grad_accumulation=1, **rasft):
    data = {
        "protocol": "authors",
        "model": {"path": str(model_dir)},
        "data": {"synthetic": {"n_train": 40, "n_test": 2, "min_level": 0, "max_level": 2}},
        "lora": {"rank": 4},
        "training": {
            "batch_size": 4,
            "grad_accumulation": grad_accumulation,
            "learning_rate": 1e-3,
            "lr_schedule_steps": 40,
        },
        "rollout": {"k": 2, "max_new_tokens": 6, "temperature": 1.0},
        "rasft": {
            "calibration_size": 40,
            "quality_filters": False,
            "hard_probe_fraction": 0.5,
            **rasft,
        },
        "eval": {"samples": 1, "max_new_tokens": 4},
        "output": {"save_every": 3},
    }
    path = tmp_path / "authors.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_recipe(path)


def test_a_run_under_the_authors_schedule(tiny_llama_dir, tmp_path):
    recipe = authors_recipe(tiny_llama_dir, tmp_path)
    result = run_training(recipe, tmp_path / "run", Console(quiet=True))
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    route = next(r for r in records if r["event"] == "route")
    refreshes = [r for r in records if r["event"] == "refresh"]
    flushes = [r for r in records if r["event"] == "hard_pool_flush"]
    assert sum(route[k] for k in ("easy", "mid_pending", "hard", "other")) == 40
    assert route["mid_pending"] > 0 and route["hard"] > 0
    assert len(refreshes) == 1  # one refresh, when the queue ran dry (before step 32)
    assert refreshes[0]["trigger"] == "queue_dry"
    counts = refreshes[0]["routes"]
    assert counts["mid_rollouts"] == math.ceil(route["mid_pending"] * 0.35)
    assert counts["mid_direct"] == route["mid_pending"] - counts["mid_rollouts"]
    assert counts["probed"] == max(1, int(route["hard"] * 0.5))
    assert len(flushes) == 1 and flushes[0]["problems"] == refreshes[0]["hard_pool"]
    assert refreshes[0]["hard_pool"] <= route["hard"] - counts["probe_released"]
    steps = [r for r in records if r["event"] == "step"]
    trained = route["easy"] + route["hard"] + route["other"]  # the first queue
    trained += counts["mid_direct"] + counts["probe_released"] + refreshes[0]["problems_selected"]
    trained += refreshes[0]["rollouts_trained"] + flushes[0]["problems"]
    assert sum(s["sequences"] for s in steps) == trained


def test_an_authors_run_refreshes_at_the_interval_and_appends_to_the_queue(
    tiny_llama_dir, tmp_path
):
    """refresh_every_steps 2: the refresh after step 2 takes the whole mid band; its sequences
    go after the first queue's rest, which is still trained in full; no refresh after step 4."""
    recipe = authors_recipe(tiny_llama_dir, tmp_path, refresh_every_steps=2)
    result = run_training(recipe, tmp_path / "run", Console(quiet=True))
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    route = next(r for r in records if r["event"] == "route")
    [refresh] = [r for r in records if r["event"] == "refresh"]
    [flush] = [r for r in records if r["event"] == "hard_pool_flush"]
    assert (refresh["step"], refresh["trigger"]) == (2, "interval")
    events = [r["event"] for r in records if r["event"] in ("step", "refresh")]
    assert events.index("refresh") == 2  # after the second step
    counts = refresh["routes"]
    trained = route["easy"] + route["hard"] + route["other"]  # the first queue, all of it
    trained += counts["mid_direct"] + counts["probe_released"] + refresh["problems_selected"]
    trained += refresh["rollouts_trained"] + flush["problems"]
    steps = [r for r in records if r["event"] == "step"]
    assert sum(s["sequences"] for s in steps) == trained
    assert len(steps) > 4  # the first queue alone outlasts the refresh


def test_every_step_of_an_authors_run_accumulates_in_full(tiny_llama_dir, tmp_path):
    """grad_accumulation 3: each optimizer step takes three micro-batches, across the refresh's
    and the flush's refills; only what is left after the last full step goes untrained."""
    recipe = authors_recipe(tiny_llama_dir, tmp_path, grad_accumulation=3)
    result = run_training(recipe, tmp_path / "run", Console(quiet=True))
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    route = next(r for r in records if r["event"] == "route")
    [refresh] = [r for r in records if r["event"] == "refresh"]
    [flush] = [r for r in records if r["event"] == "hard_pool_flush"]
    steps = [r for r in records if r["event"] == "step"]
    assert {s["micro_batches"] for s in steps} == {3}
    counts = refresh["routes"]
    queues = [route["easy"] + route["hard"] + route["other"]]
    queues.append(counts["mid_direct"] + counts["probe_released"] + refresh["problems_selected"])
    queues[-1] += refresh["rollouts_trained"]
    queues.append(flush["problems"])
    micro_batches = sum(math.ceil(n / 4) for n in queues)  # each queue drains before a refill
    assert len(steps) == micro_batches // 3


def test_an_interrupted_authors_run_resumes_to_the_same_adapter_bytes(tiny_llama_dir, tmp_path):
    """Stops inside the first queue and after the refresh: the routing, the waiting mid band, the
    hard pool and the queue in data order all come back from the checkpoint."""
    recipe = authors_recipe(tiny_llama_dir, tmp_path)
    straight = run_training(recipe, tmp_path / "straight", Console(quiet=True))
    run_dir = tmp_path / "resumed"
    for index, stop in enumerate([3, straight.steps - 2]):
        with pytest.raises(TrainingInterrupted):
            run_training(recipe, run_dir, Console(quiet=True), resume=index > 0, stop_after=stop)
    resumed = run_training(recipe, run_dir, Console(quiet=True), resume=True)
    assert resumed.steps == straight.steps
    weights = "adapters/adapters.safetensors"
    assert (run_dir / weights).read_bytes() == (tmp_path / "straight" / weights).read_bytes()
