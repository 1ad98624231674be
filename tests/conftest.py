"""Shared fixtures: tiny offline models and quick recipes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tiny_models import make_tiny_model_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"), arch="llama")


@pytest.fixture(scope="session")
def weak_base_dir(tmp_path_factory) -> Path:
    """The pretrained weak base (tiny_models.make_weak_base_model), built once per session."""
    from tiny_models import make_weak_base_model

    return make_weak_base_model(tmp_path_factory.mktemp("weak-base"))


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-qwen2"), arch="qwen2")


@pytest.fixture(autouse=True)
def no_process_outlives_its_test(request):
    """Every process a test started (tests/child_processes.py) is gone after it: killed with
    its whole group when the test failed or timed out, and a passing test that left one running
    fails here."""
    import child_processes

    yield
    leftovers = child_processes.end_all()
    report = getattr(request.node, "rep_call", None)
    if leftovers and report is not None and report.passed:
        pytest.fail(f"the test left processes running ({', '.join(leftovers)}); killed them")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.rep_call = report
    return report
