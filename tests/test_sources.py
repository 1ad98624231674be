"""Data sources through the `datasets` library (a local dataset directory and parquet, CSV, JSONL,
arrow files, read by the same call as a Hub id), column mapping, split slices, named benchmarks,
the grader each source gets, and the recipe's mapping form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from rasft_mlx.data.hub_datasets import parse_split, slice_bounds
from rasft_mlx.data.rows import DataError, DataWarning
from rasft_mlx.data.sources import BENCHMARKS, load_problems, resolve_source
from rasft_mlx.recipe.config import load_recipe
from rasft_mlx.recipe.dataset_config import ColumnsConfig, DatasetSource

ROOT = Path(__file__).resolve().parent.parent
REAL_GSM8K_TEST = Path(__file__).resolve().parents[2] / "shared/data/gsm8k/test.jsonl"

GSM8K_ROWS = [
    {
        "question": f"Ann has {n} apples and buys 2. How many?",
        "answer": f"{n} + 2 = {n + 2}\n#### {n + 2}",
    }
    for n in range(10)
]
MATH_ROWS = [
    {"problem": "Simplify 2/4.", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "level": "Level 1"},
    {"problem": "No answer here.", "solution": "We give up.", "level": "Level 5"},
    {"problem": "What is 1+1?", "solution": "So \\boxed{2}.", "level": "Level 1"},
]


@pytest.fixture
def gsm8k_dir(tmp_path):
    """A dataset directory laid out as the Hub serves openai/gsm8k (parquet, one file a split)."""
    pandas = pytest.importorskip("pandas")
    root = tmp_path / "gsm8k"
    (root / "main").mkdir(parents=True)
    pandas.DataFrame(GSM8K_ROWS).to_parquet(root / "main" / "train-00000-of-00001.parquet")
    pandas.DataFrame(GSM8K_ROWS[:4]).to_parquet(root / "main" / "test-00000-of-00001.parquet")
    return root


def test_a_dataset_directory_reads_like_a_hub_id_with_split_and_slice(gsm8k_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = DatasetSource(hub=str(gsm8k_dir), split="train[3:6]", format="gsm8k")
    problems = load_problems(spec)
    # Row numbers are the whole split's, so a slice keeps the ids the full split gives.
    assert [p.id for p in problems] == ["gsm8k-train-4", "gsm8k-train-5", "gsm8k-train-6"]
    assert problems[0].answer == "5"
    assert problems[0].solution == "3 + 2 = 5\n\\boxed{5}"
    full = load_problems(DatasetSource(hub=str(gsm8k_dir), split="train", format="gsm8k"))
    assert [p.id for p in full[3:6]] == [p.id for p in problems]
    test = load_problems(DatasetSource(hub=str(gsm8k_dir), split="test"))  # format detected
    assert len(test) == 4 and test[0].grader == "builtin"


def test_split_slices_follow_python_and_percent_rounding():
    assert parse_split("test[:200]") == ("test", None, "200")
    assert parse_split(" train[10%:20%] ") == ("train", "10%", "20%")
    assert slice_bounds(None, "200", 1000) == range(0, 200)
    assert slice_bounds("10%", "20%", 25) == range(2, 5)  # 2.5 -> 2 (banker's), 5
    assert slice_bounds("-3", None, 10) == range(7, 10)
    with pytest.raises(DataError, match="expected NAME or NAME\\[start:stop\\]"):
        parse_split("train+test")


def test_an_unknown_split_names_the_dataset_and_the_splits(gsm8k_dir):
    with pytest.raises(DataError, match=r"gsm8k.* validation: cannot load .*\['train', 'test'\]"):
        load_problems(DatasetSource(hub=str(gsm8k_dir), split="validation"))


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".arrow"])
def test_local_files_in_every_format_the_hub_serves(tmp_path, suffix):
    pandas = pytest.importorskip("pandas")
    path = tmp_path / f"rows{suffix}"
    frame = pandas.DataFrame(GSM8K_ROWS[:3])
    if suffix == ".parquet":
        frame.to_parquet(path)
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        import pyarrow as pa

        table = pa.Table.from_pandas(frame)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as out:
            out.write_table(table)
    problems = load_problems(str(path), split="test")
    assert [p.answer for p in problems] == ["2", "3", "4"]
    assert problems[0].id == "gsm8k-rows-1"


def test_a_jsonl_file_through_the_json_builder_equals_our_reader(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in GSM8K_ROWS[:5]))
    ours = load_problems(str(path))
    through_datasets = load_problems(
        DatasetSource(hub="json", data_files=str(path), split="train", format="gsm8k")
    )
    assert ours == through_datasets


def test_column_mapping_reads_any_names_and_skips_rows_without_an_answer(tmp_path):
    path = tmp_path / "odd.jsonl"
    rows = [
        {"uid": "a", "q": "Half of 1?", "worked": "It is \\boxed{\\frac{1}{2}}"},
        {"uid": "b", "q": "Unanswered", "worked": "no box"},
        {"uid": "c", "q": "GSM8K-style", "worked": "2 + 2 = 4\n#### 4"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = DatasetSource(
        hub="json",
        data_files=str(path),
        columns=ColumnsConfig(question="q", solution="worked", id="uid"),
    )
    with pytest.warns(DataWarning, match=r"skipped 1 rows \(no final answer\): rows 2"):
        problems = load_problems(spec)
    assert [(p.id, p.answer) for p in problems] == [("a", "\\frac{1}{2}"), ("c", "4")]
    assert problems[1].solution == "2 + 2 = 4\n\\boxed{4}"
    answer_only = DatasetSource(
        hub="json", data_files=str(path), columns=ColumnsConfig(question="q", answer="uid")
    )
    assert load_problems(answer_only)[0].solution == "\\boxed{a}"


def test_a_mapped_column_that_is_missing_names_the_row_and_its_columns(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "1"}) + "\n")
    spec = DatasetSource(
        hub="json", data_files=str(path), columns=ColumnsConfig(question="problem", answer="answer")
    )
    with pytest.raises(
        DataError, match=r"row 1: missing key 'problem' .*the row has answer, question"
    ):
        load_problems(spec)


def test_math_style_data_gets_math_verify_and_numeric_data_the_builtin(tmp_path, gsm8k_dir):
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in MATH_ROWS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        problems = load_problems(str(path))
        forced = load_problems(str(path), grader="builtin")
    assert {p.grader for p in problems} == {"math-verify"}
    assert {p.grader for p in forced} == {"builtin"}
    assert {p.grader for p in load_problems("synthetic", split="test")} == {"builtin"}
    gsm8k = load_problems(DatasetSource(hub=str(gsm8k_dir), split="test"))
    assert {p.grader for p in gsm8k} == {"builtin"}


def test_named_benchmarks_resolve_to_hub_datasets_unless_a_file_has_the_name(tmp_path, monkeypatch):
    assert resolve_source("gsm8k") == BENCHMARKS["gsm8k"]
    assert BENCHMARKS["gsm8k"].hub == "openai/gsm8k" and BENCHMARKS["gsm8k"].config == "main"
    assert BENCHMARKS["math500"].hub == "HuggingFaceH4/MATH-500"
    monkeypatch.chdir(tmp_path)
    Path("gsm8k").write_text("{}\n")
    assert resolve_source("gsm8k") == "gsm8k"
    with pytest.raises(DataError, match="not a named benchmark \\(gsm8k, math500, aime24\\)"):
        load_problems("gsm8kk")


def test_offline_without_a_cached_copy_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(
        DataError, match=r"openai/gsm8k \(main\) test: cannot load .*unset HF_HUB_OFFLINE"
    ):
        load_problems("gsm8k", split="test")


def prepared_hub_cache(gsm8k_dir: Path, cache: Path) -> None:
    """The folder `datasets` leaves in HF_DATASETS_CACHE after one online
    load_dataset("openai/gsm8k", "main"): the arrow files of every split under
    openai___gsm8k/main/0.0.0/HASH, built here from gsm8k_dir's parquet files."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    files = {
        s: [str(gsm8k_dir / "main" / f"{s}-00000-of-00001.parquet")] for s in ("train", "test")
    }
    builder = Parquet(
        cache_dir=str(cache), dataset_name="gsm8k", config_name="main", data_files=files, hash="0f"
    )
    builder.download_and_prepare()
    (cache / "openai___gsm8k" / "main").mkdir(parents=True)
    Path(builder.cache_dir).parent.rename(cache / "openai___gsm8k" / "main" / "0.0.0")


def test_a_hub_dataset_cached_by_an_earlier_online_run_reads_offline(gsm8k_dir, tmp_path):
    cache = tmp_path / "datasets-cache"
    prepared_hub_cache(gsm8k_dir, cache)
    code = (
        "import json; from rasft_mlx.data.sources import load_problems, DatasetSource; "
        "source = DatasetSource(hub='openai/gsm8k', config='main', split='test[1:3]'); "
        "print(json.dumps([p.__dict__ for p in load_problems(source)]))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache)}
    env |= {"HF_HOME": str(tmp_path / "hf-home"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    offline = json.loads(done.stdout.strip().splitlines()[-1])
    direct = load_problems(DatasetSource(hub=str(gsm8k_dir), split="test[1:3]"))
    assert offline == [p.__dict__ for p in direct]
    assert [p["id"] for p in offline] == ["gsm8k-test-2", "gsm8k-test-3"]


def test_without_the_datasets_package_the_error_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match="pip install datasets"):
        load_problems(DatasetSource(hub="openai/gsm8k", config="main"))


def test_the_recipe_mapping_form_and_its_set_override(tmp_path, gsm8k_dir):
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(
        "model: {path: builtin:smollm2-135m}\n"
        f"data:\n  train: {{hub: {gsm8k_dir}, split: 'train[:5]'}}\n  test: gsm8k\n"
    )
    recipe = load_recipe(recipe_path)
    assert recipe.data.train == DatasetSource(hub=str(gsm8k_dir), split="train[:5]")
    assert recipe.data.test == "gsm8k"
    overridden = load_recipe(recipe_path, [f"data.train={{hub: {gsm8k_dir}, split: test}}"])
    assert overridden.data.train.split == "test"
    assert load_recipe(recipe_path, ["data.train.split=train[5:]"]).data.train.split == "train[5:]"
    problems = load_problems(recipe.data.train)
    assert len(problems) == 5


@pytest.mark.skipif(not REAL_GSM8K_TEST.is_file(), reason="shared GSM8K file not present")
def test_real_gsm8k_reads_the_same_through_datasets_and_our_reader():
    ours = load_problems(str(REAL_GSM8K_TEST), limit=200)
    spec = DatasetSource(
        hub="json", data_files=str(REAL_GSM8K_TEST), split="train[:200]", format="gsm8k"
    )
    through_datasets = load_problems(spec)
    assert [p.answer for p in ours] == [p.answer for p in through_datasets]
    assert [p.solution for p in ours] == [p.solution for p in through_datasets]


def test_the_retention_set_is_the_earlier_stages_test_questions():
    """synthetic-retention: test-split questions at other levels, the same ones a stage-0 recipe
    with those levels tests on, and none of this recipe's training questions."""
    from rasft_mlx.data.sources import load_problems
    from rasft_mlx.data.synthetic import level_of

    stage1 = {"seed": 0, "n_train": 60, "min_level": 3, "max_level": 3, "n_retention": 40}
    retention = load_problems("synthetic-retention", synthetic=stage1, split="test")
    stage0_test = load_problems(
        "synthetic",
        synthetic={"seed": 0, "n_test": 40, "min_level": 1, "max_level": 2},
        split="test",
    )
    assert [p.question for p in retention] == [p.question for p in stage0_test]
    assert {level_of(p) for p in retention} == {1, 2}
    train = load_problems("synthetic", synthetic=stage1, split="train")
    assert not {p.question for p in train} & {p.question for p in retention}
