"""Tests for recipe loading, validation, overrides and saving (rasft_mlx.recipe.config)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rasft_mlx.recipe.config import (
    Recipe,
    RecipeError,
    describe_fields,
    load_recipe,
    recipe_from_dict,
    recipe_to_dict,
    resolve_run_dir,
    save_recipe,
    validate_recipe,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "x.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def write_with_model(tmp_path: Path, text: str) -> Path:
    """A recipe that names its model (every recipe must), then `text`."""
    return write(tmp_path, "model:\n  path: builtin:smollm2-135m\n" + text)


def error_of(path: Path, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return str(info.value)


FULL_RECIPE = """\
model:
  path: mlx-community/Qwen2.5-0.5B-Instruct
  dtype: bfloat16
  revision: main
data:
  train: data/train.jsonl
  test: hf://openai/gsm8k/test.jsonl
  format: gsm8k
  max_train: 500
  synthetic:
    min_level: 2
    max_level: 4
lora:
  type: dora
  rank: 8
  scale: 4          # an int for a float field
  keys: [self_attn.q_proj, self_attn.v_proj]
training:
  mode: sft_kl
  batch_size: 8
  learning_rate: 2e-5   # YAML 1.1 reads this as a string
  dft_factor: false
rollout:
  top_p: 1.0
rasft:
  weighting: linear
  mid_window_start: [0.1, 0.3]
  mid_window_end: [0.6, 0.8]
eval:
  limit: 50
output:
  dir: out/{name}
  name: exp1
"""


def test_an_empty_recipe_or_one_without_a_model_is_an_error_naming_the_file(tmp_path):
    for text in ("", "# only a comment\n"):
        path = write(tmp_path, text)
        assert error_of(path).startswith(f"{path}: the recipe is empty; a recipe needs at least")
    path = write(tmp_path, "training:\n  epochs: 2\n")
    assert error_of(path).startswith(f"{path}: the recipe names no model")
    assert error_of(write(tmp_path, "model:\n  path: ''\n")).startswith(f"{path}: the recipe")
    named = load_recipe(write(tmp_path, ""), ["model.path=builtin:smollm2-135m"])
    assert named == dataclasses.replace(
        Recipe(), model=dataclasses.replace(Recipe().model, path="builtin:smollm2-135m")
    )


def test_defaults_pass_validation():
    validate_recipe(Recipe())
    assert Recipe().training.mode == "rasft"


def test_full_valid_recipe(tmp_path):
    recipe = load_recipe(write(tmp_path, FULL_RECIPE))
    assert recipe.model.path == "mlx-community/Qwen2.5-0.5B-Instruct"
    assert recipe.model.dtype == "bfloat16"
    assert recipe.model.revision == "main"
    assert recipe.data.format == "gsm8k"
    assert recipe.data.max_train == 500
    assert recipe.data.synthetic == dataclasses.replace(
        Recipe().data.synthetic, min_level=2, max_level=4
    )
    assert recipe.lora.type == "dora"
    assert recipe.lora.scale == 4.0 and isinstance(recipe.lora.scale, float)
    assert recipe.lora.keys == ("self_attn.q_proj", "self_attn.v_proj")
    assert recipe.training.mode == "sft_kl"
    assert recipe.training.learning_rate == 2e-5
    assert recipe.training.dft_factor is False
    assert recipe.rasft.mid_window_start == (0.1, 0.3)
    assert recipe.eval.limit == 50
    assert recipe.output.name == "exp1"
    assert recipe.rollout.k == Recipe().rollout.k  # untouched keys keep their defaults
    assert recipe.training.epochs == Recipe().training.epochs


def test_empty_section_gives_defaults(tmp_path):
    recipe = load_recipe(write_with_model(tmp_path, "lora:\ntraining:\n  epochs: 2\n"))
    assert recipe.lora == Recipe().lora


def test_yaml_syntax_error_reports_line_and_column(tmp_path):
    path = write(tmp_path, "training:\n  epochs: 2\n  batch_size: [1, 2\n")
    message = error_of(path)
    assert message.startswith(f"{path}:4:1: invalid YAML: ")
    assert "expected ',' or ']'" in message


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path):
    # PyYAML keeps the last of two equal keys silently; a stray second line must not decide a run.
    path = write(tmp_path, "model:\n  path: a\ntraining:\n  seed: 1\n  epochs: 2\n  seed: 3\n")
    message = error_of(path)
    assert message.startswith(f"{path}:6:3: invalid YAML: ")
    assert "key 'seed' appears twice in one mapping (first on line 4)" in message
    top = write(tmp_path, "protocol: authors\nmodel: {path: a}\nprotocol: project\n")
    assert error_of(top).startswith(f"{top}:3:1: invalid YAML: key 'protocol' appears twice")
    same_key_in_two_sections = "model: {path: a}\ntraining: {seed: 1}\nrollout: {seed: 2}\n"
    with pytest.raises(RecipeError, match="rollout.seed"):  # not a duplicate: another error
        load_recipe(write(tmp_path, same_key_in_two_sections))


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "- a\n- b\n")
    assert error_of(path) == f"{path}: the top level must be a mapping of sections, got list"


def test_missing_file(tmp_path):
    path = tmp_path / "missing.yaml"
    assert error_of(path).startswith(f"{path}: cannot read recipe: ")


def test_unknown_section_with_suggestion(tmp_path):
    path = write(tmp_path, "trainig:\n  epochs: 2\n")
    assert error_of(path) == f"{path}: unknown key 'trainig'; did you mean 'training'?"


def test_unknown_nested_key_with_suggestion(tmp_path):
    path = write(tmp_path, "training:\n  lerning_rate: 0.001\n")
    assert (
        error_of(path)
        == f"{path}: unknown key 'training.lerning_rate'; did you mean 'training.learning_rate'?"
    )


def test_unknown_deeply_nested_key(tmp_path):
    path = write(tmp_path, "data:\n  synthetic:\n    max_levl: 3\n")
    assert error_of(path) == (
        f"{path}: unknown key 'data.synthetic.max_levl'; did you mean 'data.synthetic.max_level'?"
    )


def test_unknown_key_without_close_match(tmp_path):
    path = write(tmp_path, "training:\n  zzzz: 1\n")
    assert error_of(path) == f"{path}: unknown key 'training.zzzz'"


def test_section_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "lora: 3\n")
    assert error_of(path) == f"{path}: 'lora' is a section and must be a mapping, got 3 (int)"


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "training:\n  batch_size: four\n",
            "'training.batch_size' must be an integer, got 'four' (str)",
        ),
        (
            "training:\n  batch_size: 2.5\n",
            "'training.batch_size' must be an integer, got 2.5 (float)",
        ),
        (
            "training:\n  batch_size: 2.0\n",
            "'training.batch_size' must be an integer, got 2.0 (float)",
        ),
        (
            "training:\n  batch_size: true\n",
            "'training.batch_size' must be an integer, got True (bool)",
        ),
        (
            "training:\n  dft_factor: 1\n",
            "'training.dft_factor' must be a boolean (true/false), got 1 (int)",
        ),
        ("model:\n  path: [a, b]\n", "'model.path' must be a string, got ['a', 'b'] (list)"),
        ("output:\n  name: 7\n", "'output.name' must be a string, got 7 (int)"),
        (
            "training:\n  learning_rate: fast\n",
            "'training.learning_rate' must be a number, got 'fast' (str)",
        ),
        (
            "training:\n  learning_rate: true\n",
            "'training.learning_rate' must be a number, got True (bool)",
        ),
        (
            "training:\n  learning_rate: .nan\n",
            "'training.learning_rate' must be a number, got nan (float)",
        ),
        (
            "training:\n  max_steps: ten\n",
            "'training.max_steps' must be an integer or null, got 'ten' (str)",
        ),
    ],
)
def test_wrong_types(tmp_path, yaml_text, expected):
    path = write(tmp_path, yaml_text)
    assert error_of(path) == f"{path}: {expected}"


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "training:\n  learning_rate: -0.001\n",
            "'training.learning_rate' must be > 0.0, got -0.001",
        ),
        ("training:\n  learning_rate: 0\n", "'training.learning_rate' must be > 0.0, got 0.0"),
        ("rollout:\n  top_p: 0\n", "'rollout.top_p' must be in (0.0, 1.0], got 0.0"),
        ("rollout:\n  top_p: 1.5\n", "'rollout.top_p' must be in (0.0, 1.0], got 1.5"),
        ("rasft:\n  ratio_max: 0\n", "'rasft.ratio_max' must be > 0.0, got 0.0"),
        ("training:\n  batch_size: 0\n", "'training.batch_size' must be >= 1, got 0"),
        (
            "data:\n  synthetic:\n    max_level: 6\n",
            "'data.synthetic.max_level' must be in [0, 5], got 6",
        ),
        ("lora:\n  num_layers: -2\n", "'lora.num_layers' must be >= -1, got -2"),
        ("eval:\n  limit: 0\n", "'eval.limit' must be >= 1, got 0"),
    ],
)
def test_out_of_range(tmp_path, yaml_text, expected):
    path = write(tmp_path, yaml_text)
    assert error_of(path) == f"{path}: {expected}"


def test_bounds_are_inclusive(tmp_path):
    recipe = load_recipe(
        write_with_model(tmp_path, "rollout:\n  top_p: 1\ntraining:\n  warmup_steps: 0\n")
    )
    assert recipe.rollout.top_p == 1.0
    assert recipe.training.warmup_steps == 0


def test_choices_with_suggestion(tmp_path):
    path = write(tmp_path, "training:\n  mode: sftt\n")
    assert error_of(path) == (
        f"{path}: 'training.mode' must be one of sft, dft, sft_kl, asft, profit, rasft, rft; "
        "got 'sftt' (did you mean 'sft'?)"
    )


def test_choices_without_suggestion(tmp_path):
    path = write(tmp_path, "lora:\n  type: qqqq\n")
    assert error_of(path) == f"{path}: 'lora.type' must be one of lora, dora, full; got 'qqqq'"


def test_none_allowed_for_optional_fields(tmp_path):
    text = "model:\n  path: m\n  revision: null\ntraining:\n  max_steps: ~\nlora:\n  keys: null\n"
    recipe = load_recipe(write(tmp_path, text))
    assert recipe.model.revision is None
    assert recipe.training.max_steps is None
    assert recipe.lora.keys is None


def test_none_rejected_for_required_fields(tmp_path):
    path = write(tmp_path, "training:\n  batch_size: null\n")
    assert (
        error_of(path) == f"{path}: 'training.batch_size' must be an integer, got None (NoneType)"
    )


def test_tuple_fields(tmp_path):
    text = "lora:\n  keys: [mlp.up_proj]\nrasft:\n  mid_window_start: [0, 0.5]\n"
    recipe = load_recipe(write_with_model(tmp_path, text))
    assert recipe.lora.keys == ("mlp.up_proj",)
    assert recipe.rasft.mid_window_start == (0.0, 0.5)


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "rasft:\n  mid_window_start: [0.1, 0.2, 0.3]\n",
            "'rasft.mid_window_start' must be a list of 2 numbers, got [0.1, 0.2, 0.3] (list)",
        ),
        (
            "rasft:\n  mid_window_start: 0.2\n",
            "'rasft.mid_window_start' must be a list of 2 numbers, got 0.2 (float)",
        ),
        (
            "rasft:\n  mid_window_start: [0.1, x]\n",
            "'rasft.mid_window_start' must be a list of 2 numbers, got [0.1, 'x'] (list)",
        ),
        (
            "lora:\n  keys: [q_proj, 3]\n",
            "'lora.keys' must be a list of strings or null, got ['q_proj', 3] (list)",
        ),
        (
            "lora:\n  keys: q_proj\n",
            "'lora.keys' must be a list of strings or null, got 'q_proj' (str)",
        ),
    ],
)
def test_bad_tuple_fields(tmp_path, yaml_text, expected):
    path = write(tmp_path, yaml_text)
    assert error_of(path) == f"{path}: {expected}"


def test_override_valid_nested(tmp_path):
    path = write_with_model(tmp_path, "training:\n  batch_size: 8\n")
    recipe = load_recipe(
        path,
        [
            "training.batch_size=2",
            "data.synthetic.max_level=5",
            "training.dft_factor=false",
            "model.revision=null",
            "lora.keys=[q_proj, v_proj]",
            "output.name=123",  # a string field keeps the raw text
            "data.system_prompt=Answer: briefly",
        ],
    )
    assert recipe.training.batch_size == 2
    assert recipe.data.synthetic.max_level == 5
    assert recipe.training.dft_factor is False
    assert recipe.model.revision is None
    assert recipe.lora.keys == ("q_proj", "v_proj")
    assert recipe.output.name == "123"
    assert recipe.data.system_prompt == "Answer: briefly"


def test_override_creates_missing_section(tmp_path):
    recipe = load_recipe(write_with_model(tmp_path, ""), ["rollout.k=5"])
    assert recipe.rollout.k == 5


def test_override_last_one_wins(tmp_path):
    recipe = load_recipe(write_with_model(tmp_path, ""), ["rollout.k=5", "rollout.k=7"])
    assert recipe.rollout.k == 7


def test_override_float_in_exponent_form(tmp_path):
    recipe = load_recipe(write_with_model(tmp_path, ""), ["training.learning_rate=1e-4"])
    assert recipe.training.learning_rate == 1e-4
    assert isinstance(recipe.training.learning_rate, float)


def test_override_unknown_key_with_suggestion(tmp_path):
    message = error_of(write(tmp_path, ""), ("training.lr=1e-4",))
    assert message == "--set training.lr=1e-4: unknown key 'training.lr'"
    message = error_of(write(tmp_path, ""), ("training.learning_rat=1e-4",))
    assert message == (
        "--set training.learning_rat=1e-4: unknown key 'training.learning_rat'; "
        "did you mean 'training.learning_rate'?"
    )
    message = error_of(write(tmp_path, ""), ("trainig.epochs=2",))
    assert message == "--set trainig.epochs=2: unknown key 'trainig'; did you mean 'training'?"


def test_override_bad_type(tmp_path):
    message = error_of(write(tmp_path, ""), ("training.batch_size=four",))
    assert message == (
        "--set training.batch_size=four: 'training.batch_size' must be an integer, got 'four' (str)"
    )


def test_override_out_of_range(tmp_path):
    message = error_of(write(tmp_path, ""), ("training.learning_rate=-1e-4",))
    assert message == (
        "--set training.learning_rate=-1e-4: 'training.learning_rate' must be > 0.0, got -0.0001"
    )


def test_override_without_equals(tmp_path):
    message = error_of(write(tmp_path, ""), ("training.batch_size",))
    assert message == (
        "--set training.batch_size: expected KEY=VALUE, e.g. training.learning_rate=1e-4"
    )


def test_override_of_a_whole_section(tmp_path):
    message = error_of(write(tmp_path, ""), ("lora=3",))
    assert message == "--set lora=3: 'lora' is a section; set one of its keys, e.g. 'lora.type=...'"


def test_override_below_a_value(tmp_path):
    message = error_of(write(tmp_path, ""), ("lora.rank.x=3",))
    assert message == "--set lora.rank.x=3: 'lora.rank' is a value, not a section"


def test_override_unparsable_value(tmp_path):
    message = error_of(write(tmp_path, ""), ("rollout.k=[1",))
    assert message.startswith("--set rollout.k=[1: cannot parse value '[1': ")


def test_file_errors_still_blame_the_file_with_overrides(tmp_path):
    path = write(tmp_path, "training:\n  epochs: many\n")
    message = error_of(path, ("training.batch_size=2",))
    assert message == f"{path}: 'training.epochs' must be an integer, got 'many' (str)"


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "data:\n  synthetic:\n    min_level: 4\n    max_level: 2\n",
            "'data.synthetic.min_level' (4) must be <= 'data.synthetic.max_level' (2)",
        ),
        ("rasft:\n  r_min: 3.5\n", "'rasft.r_min' (3.5) must be <= 'rasft.r_max' (3.0)"),
        ("rasft:\n  ratio_min: 2\n", "'rasft.ratio_min' (2.0) must be <= 'rasft.ratio_max' (1.2)"),
        (
            "rasft:\n  rollout_adv_floor: 0.2\n",
            "'rasft.rollout_adv_floor' (0.2) must be <= 'rasft.rollout_adv_cap' (0.15)",
        ),
        (
            "rasft:\n  easy_quantile: 0.9\n",
            "'rasft.easy_quantile' (0.9) must be < 'rasft.hard_quantile' (0.9)",
        ),
        (
            "rasft:\n  mid_window_start: [0.5, 0.4]\n",
            "'rasft.mid_window_start' must be [lo, hi] with 0 <= lo < hi <= 1, got [0.5, 0.4]",
        ),
        (
            "rasft:\n  mid_window_end: [0.5, 1.5]\n",
            "'rasft.mid_window_end' must be [lo, hi] with 0 <= lo < hi <= 1, got [0.5, 1.5]",
        ),
        (
            "rasft:\n  mid_window_end: [-0.1, 0.5]\n",
            "'rasft.mid_window_end' must be [lo, hi] with 0 <= lo < hi <= 1, got [-0.1, 0.5]",
        ),
    ],
)
def test_cross_field_checks(tmp_path, yaml_text, expected):
    path = write(tmp_path, yaml_text)
    assert error_of(path) == f"{path}: {expected}"


def test_cross_field_equal_bounds_allowed(tmp_path):
    text = "rasft:\n  r_min: 2\n  r_max: 2\ndata:\n  synthetic:\n    min_level: 3\n"
    recipe = load_recipe(write_with_model(tmp_path, text))
    assert recipe.rasft.r_min == recipe.rasft.r_max == 2.0


def test_cross_field_check_blames_the_override(tmp_path):
    message = error_of(write(tmp_path, ""), ("rasft.r_max=0.5",))
    assert message == "--set rasft.r_max=0.5: 'rasft.r_min' (1.0) must be <= 'rasft.r_max' (0.5)"


def test_validate_recipe_on_a_built_recipe():
    bad = dataclasses.replace(Recipe(), rasft=dataclasses.replace(Recipe().rasft, r_min=9.0))
    with pytest.raises(RecipeError) as info:
        validate_recipe(bad, source="cli")
    assert str(info.value) == "cli: 'rasft.r_min' (9.0) must be <= 'rasft.r_max' (3.0)"
    bad = dataclasses.replace(Recipe(), lora=dataclasses.replace(Recipe().lora, rank=0))
    with pytest.raises(RecipeError) as info:
        validate_recipe(bad)
    assert str(info.value) == "<recipe>: 'lora.rank' must be >= 1, got 0"


def test_recipe_to_dict_is_plain():
    data = recipe_to_dict(Recipe())
    assert data["rasft"]["mid_window_start"] == [0.2, 0.45]
    assert data["data"]["synthetic"]["max_level"] == 3
    assert data["model"]["revision"] is None
    assert list(data) == [
        "protocol",
        "model",
        "data",
        "lora",
        "training",
        "rollout",
        "rasft",
        "eval",
        "output",
    ]
    assert data["protocol"] == "project"


def test_save_load_round_trip(tmp_path):
    recipe = load_recipe(write(tmp_path, FULL_RECIPE), ["training.learning_rate=3e-6"])
    saved = tmp_path / "run" / "recipe.yaml"
    save_recipe(recipe, saved)
    assert load_recipe(saved) == recipe
    assert sorted(p.name for p in saved.parent.iterdir()) == ["recipe.yaml"]  # no temp leftovers
    assert load_recipe(saved).lora.keys == ("self_attn.q_proj", "self_attn.v_proj")


def test_save_overwrites_and_round_trips_defaults(tmp_path):
    saved = tmp_path / "recipe.yaml"
    saved.write_text("stale", encoding="utf-8")
    save_recipe(Recipe(), saved)
    assert load_recipe(saved) == Recipe()


def test_recipe_from_dict(tmp_path):
    recipe = load_recipe(write(tmp_path, FULL_RECIPE))
    assert recipe_from_dict(recipe_to_dict(recipe)) == recipe
    with pytest.raises(RecipeError) as info:
        recipe_from_dict({"eval": {"samples": "3"}})
    assert str(info.value) == "<dict>: 'eval.samples' must be an integer, got '3' (str)"
    with pytest.raises(RecipeError) as info:
        recipe_from_dict([1], source="state.json")
    assert str(info.value) == "state.json: the top level must be a mapping of sections, got list"


def test_resolve_run_dir():
    recipe = Recipe()
    assert resolve_run_dir(recipe, None) == Path("runs/run")
    named = dataclasses.replace(
        recipe, output=dataclasses.replace(recipe.output, dir="/tmp/x/{name}-a", name="exp")
    )
    assert resolve_run_dir(named, None) == Path("/tmp/x/exp-a")
    assert resolve_run_dir(named, "elsewhere/out") == Path("elsewhere/out")


def test_describe_fields():
    rows = {row[0]: row for row in describe_fields()}
    assert rows["training.learning_rate"] == ("training.learning_rate", "float", "0.0001", "> 0.0")
    assert rows["lora.keys"][1:3] == ("list[str] | null", "null")
    assert rows["rasft.mid_window_start"][1:3] == ("list[float, float]", "[0.2, 0.45]")
    assert rows["training.mode"][3] == "one of sft, dft, sft_kl, asft, profit, rasft, rft"
    assert rows["rollout.top_p"][3] == "in (0.0, 1.0]"
    assert rows["training.dft_factor"][1:3] == ("bool", "true")
    assert "data.synthetic.max_level" in rows
    assert "data.synthetic" not in rows
    assert len(rows) == len(describe_fields())


def test_report_to_lists_known_trackers_once():
    recipe = recipe_from_dict({"output": {"report_to": ["wandb", "tensorboard"]}})
    assert recipe.output.report_to == ("wandb", "tensorboard") and recipe.output.report
    assert recipe_from_dict({}).output.report_to == ()
    with pytest.raises(
        RecipeError, match=r"'output.report_to' must be one of .*did you mean 'wandb'"
    ):
        recipe_from_dict({"output": {"report_to": ["wandbb"]}})
    with pytest.raises(RecipeError, match="lists an entry twice"):
        recipe_from_dict({"output": {"report_to": ["trackio", "trackio"]}})
    with pytest.raises(RecipeError, match="must be a list of strings"):
        recipe_from_dict({"output": {"report_to": "wandb"}})


def test_full_fine_tuning_keys(tmp_path):
    recipe = load_recipe(write_with_model(tmp_path, "lora:\n  type: full\n"))
    assert recipe.lora.type == "full" and recipe.lora.train_embeddings is True
    path = write_with_model(tmp_path, "lora:\n  type: full\n  train_embeddings: false\n")
    assert load_recipe(path).lora.train_embeddings is False
    path = write_with_model(tmp_path, "lora:\n  type: full\n  keys: [self_attn.q_proj]\n")
    assert "'lora.keys' (('self_attn.q_proj',)) does not apply to 'lora.type' full" in error_of(
        path
    )
    path = write_with_model(tmp_path, "lora:\n  dropout: 0.1\n")
    assert "'lora.dropout' (0.1) does not apply" in error_of(path, ("lora.type=full",))
    assert error_of(path, ("lora.type=full",)).startswith("--set lora.type=full")
    path = write(tmp_path, "model:\n  path: m\n  adapter: runs/sft\n")
    message = error_of(path, ("lora.type=full",))
    assert "'lora.type' must be lora, got 'full'" in message and "--format fused" in message


def test_rollout_budget_per_demo_token_is_off_by_default_and_under_the_authors(tmp_path):
    """`rollout.max_new_tokens_per_demo_token`: 0 (off) by default and under `protocol: authors`
    (their one --rollout_max_tokens), which still lets a recipe set it; never negative."""
    from rasft_mlx.recipe.protocols import protocol_report

    key = "rollout.max_new_tokens_per_demo_token"
    assert Recipe().rollout.max_new_tokens_per_demo_token == 0.0
    authors = recipe_from_dict({"protocol": "authors"})
    assert authors.rollout.max_new_tokens_per_demo_token == 0.0
    assert key in protocol_report(authors)[0]
    changed = recipe_from_dict(
        {"protocol": "authors", "rollout": {"max_new_tokens_per_demo_token": 2}}
    )
    assert changed.rollout.max_new_tokens_per_demo_token == 2.0
    assert protocol_report(changed)[1] == [f"{key}: 2.0 (protocol 0.0)"]
    path = write_with_model(tmp_path, "rollout:\n  max_new_tokens_per_demo_token: 1.5\n")
    assert load_recipe(path).rollout.max_new_tokens_per_demo_token == 1.5
    path = write(tmp_path, "rollout:\n  max_new_tokens_per_demo_token: -0.5\n")
    assert error_of(path) == f"{path}: '{key}' must be >= 0.0, got -0.5"
    path = write_with_model(tmp_path, "rollout:\n  max_new_tokens_per_demo_token: .nan\n")
    assert key in error_of(path)
