"""A role process tunes CPython's collector once its roles have started (``tickflow.node.tune_gc``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from tickflow.node import GC_THRESHOLDS, tune_gc
from tickflow.settings import Settings


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_the_started_heap_is_frozen_and_collections_are_rarer(restored_gc: None) -> None:
    kept = [object() for _ in range(10)]
    tune_gc()
    assert gc.get_freeze_count() > len(kept)  # what existed is out of every later collection
    assert gc.get_threshold() == GC_THRESHOLDS
    young, _middle, full = GC_THRESHOLDS
    assert young > 700 and full > 10  # CPython's defaults: 700, 10, 10


def test_tuning_is_on_by_default_and_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().gc_tuning
    monkeypatch.setenv("TICKFLOW_GC_TUNING", "false")
    assert not Settings().gc_tuning
