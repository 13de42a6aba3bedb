"""The stacks benchmark's pure figures (``tests.bench.stacks_log``, ``tests.bench.stacks``): memory over time and
bytes per stack, the engines' partition split read from their logs, records per tick, the process layout."""

from __future__ import annotations

import re
from collections import Counter

from tests.bench.stacks import layout, parse_args, retention
from tests.bench.stacks_log import TopicCount, key_kind, memory_figures, owned, partition_owners, per_tick

TICK_RUN = re.compile(rb"bs-\d+\.t\d+")


def test_memory_grows_then_flattens_and_bytes_per_stack_count_from_before_the_stacks() -> None:
    # 100 MiB before the stacks; +1 MiB a minute for 10 minutes, then flat for 5 (sampled every 5 s).
    series = [(float(t), 110.0 + min(t, 600) / 60) for t in range(0, 901, 5)]
    m = memory_figures(series, before_mib=100.0, stacks=1000, flat_after_s=610.0)
    assert m["bytes_per_stack"] == round(20 * 2**20 / 1000)  # 120 MiB at the end, 100 before
    assert m["growth_mib_per_min_after_retention_full"] == 0.0
    assert m["growth_mib_per_min_last_third"] == 0.0  # the last 5 of 15 minutes are flat
    assert m["rss_mib_by_minute"][:3] == [[0, 110.0], [1, 111.0], [2, 112.0]] and m["rss_mib_by_minute"][-1] == [
        15,
        120.0,
    ]
    growing = memory_figures([(float(t), 100 + t / 30) for t in range(0, 61, 5)], 100.0, 10, None)
    assert (
        growing["growth_mib_per_min_last_third"] == 2.0 and growing["growth_mib_per_min_after_retention_full"] is None
    )


def test_partition_owners_are_each_engines_last_assignment() -> None:
    logs = {
        "node1": ["engine owns partitions [0, 1, 2, 3]", "x", "engine owns partitions [0, 1]"],
        "node2": ["engine owns partitions [2, 3]"],
    }
    owners, problems = partition_owners(logs)
    assert owners == {0: "node1", 1: "node1", 2: "node2", 3: "node2"} and problems == []
    assert owned(Counter({0: 5, 1: 5, 3: 2, 7: 1}), owners) == {"node1": 10, "node2": 2, "unowned": 1}
    _, twice = partition_owners({"node1": ["engine owns partitions [0, 1]"], "node2": ["engine owns partitions [1]"]})
    assert twice == ["partition 1 owned by node1 and node2"]


def test_records_per_tick_by_topic_type_and_key() -> None:
    assert key_kind(b"stack:bs-00001", TICK_RUN) == "stack" and key_kind(b"bs-00001.t12", TICK_RUN) == "tick_run"
    assert key_kind(b"__applied__", TICK_RUN) == "applied_note" and key_kind(b"probe", TICK_RUN) == "other"
    events = TopicCount(0, 100, TICK_RUN, by_type=Counter(TickFired=4, RunStarted=4), records_in_window=8, bytes=800)
    events.total = {"offsets": 12, "records": 9}
    commands = TopicCount(0, 100, TICK_RUN, by_type=Counter(StartRun=4), records_in_window=4, bytes=100)
    out = per_tick({"events": events, "commands": commands}, ticks=4, ticks_all=6)
    assert out["events"]["records_per_tick"] == 2.0 and out["events"]["by_type_per_tick"]["TickFired"] == 1.0
    assert out["events"]["whole_topic"]["not_records"] == 3 and out["records_per_tick_all_topics"] == 3.0
    assert out["not_records_per_tick_whole_run"] == 0.5  # 3 markers over 6 ticks in all
    assert per_tick({"events": events}, ticks=0) == {"ticks": 0}


def test_layouts_and_the_retention_the_roles_read() -> None:
    assert layout(parse_args(["--stacks", "10"])) == {"node": "engine,worker"}
    assert layout(parse_args(["--engines", "2"])) == {"node1": "engine,worker", "node2": "engine,worker"}
    assert layout(parse_args(["--layout", "split"])) == {"engine": "engine", "worker": "worker"}
    kept = retention({"TICKFLOW_TICK_RUN_RETENTION_S": "30"})
    assert kept["tick_run_retention_s"] == 30.0 and kept["finished_state_s"] == 60.0
