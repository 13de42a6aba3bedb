"""Topic creation on the real broker: Kafka's per-topic refusals (which aiokafka returns instead of raising) come
back as an error that names the topic and Kafka's reason, a refusal that may pass a moment later is retried, and
the cluster's size is taken from the bootstrap list as well as from the brokers serving at that instant."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tickflow.events import TopicNames
from tickflow.runtime.kafka import STATE_TOPIC_CONFIGS, TopicLayoutError, _create_missing, ensure_topics, new_admin

pytestmark = pytest.mark.integration


async def test_a_refused_topic_is_raised_with_kafkas_reason(kafka_bootstrap: str, prefix: str) -> None:
    admin = new_admin(kafka_bootstrap)
    await admin.start()
    try:
        bad = NewTopic(f"{prefix}.bad", 1, 1, topic_configs={"cleanup.policy": "sometimes"})
        began = time.monotonic()
        with pytest.raises(TopicLayoutError, match=rf"{prefix}\.bad first: InvalidConfigurationError"):
            await _create_missing(admin, [bad], wait_s=10)
        assert time.monotonic() - began < 5, "a refusal that cannot pass is not retried"

        too_many = NewTopic(f"{prefix}.wide", 1, 3)  # three copies on a broker alone: may pass once others join
        began = time.monotonic()
        with pytest.raises(TopicLayoutError, match="InvalidReplicationFactorError"):
            await _create_missing(admin, [too_many], wait_s=1.5)
        assert time.monotonic() - began >= 1.5, "a refusal that may pass later is retried until wait_s"
        assert f"{prefix}.wide" not in set(await admin.list_topics())
    finally:
        await admin.close()


async def test_a_bootstrap_list_of_three_addresses_asks_for_three_copies(kafka_bootstrap: str, prefix: str) -> None:
    """Three listed addresses (here, three names of the one local broker) mean a cluster of three: the topics are
    asked with three copies, which the single broker refuses, rather than quietly made with one."""
    port = kafka_bootstrap.rsplit(":", 1)[1]
    three = f"127.0.0.1:{port},localhost:{port},127.0.0.1:{port} "
    assert len({a.strip() for a in three.split(",")}) == 2  # the same address twice counts once
    names = TopicNames(prefix=prefix, partitions=2)
    await ensure_topics(three, names, (), wait_s=0.5)  # two addresses: still one copy, and the topics exist

    wide = TopicNames(prefix=f"{prefix}w", partitions=2)
    three = f"127.0.0.1:{port},localhost:{port},LOCALHOST:{port}"
    with pytest.raises(TopicLayoutError, match="InvalidReplicationFactorError"):
        await ensure_topics(three, wide, (), wait_s=1)


async def test_the_state_topic_rolls_small_segments_so_compaction_keeps_up(kafka_bootstrap: str, prefix: str) -> None:
    """Compaction cleans closed segments only: the state topic closes one at 16 MiB or 15 minutes, not Kafka's 1 GiB
    or 7 days, so a recovery reads close to one snapshot per key, not every round's copy."""
    names = TopicNames(prefix=prefix, partitions=2)
    await ensure_topics(kafka_bootstrap, names, ())
    admin = new_admin(kafka_bootstrap)
    await admin.start()
    try:
        values: dict[str, str] = {}
        for _ in range(50):  # a broker may answer before the new topic's configs reached it
            (configs,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, names.state)])
            values = {c[0]: c[1] for c in configs.resources[0][4]}
            if values:
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    assert {k: values[k] for k in STATE_TOPIC_CONFIGS} == STATE_TOPIC_CONFIGS
