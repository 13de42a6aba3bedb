"""Broker warm-up is not an ERROR in tickflow's logs (``tickflow.cli.main.RetriedKafkaErrors``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from aiokafka.errors import CoordinatorNotAvailableError, GroupAuthorizationFailedError

from tickflow.cli.main import RetriedKafkaErrors


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(RetriedKafkaErrors())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[Kept]:
    handler = Kept()
    logger = logging.getLogger("aiokafka.consumer.group_coordinator")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logging.getLogger("aiokafka").setLevel(logging.NOTSET)


def test_a_retried_coordinator_error_is_a_warning_and_a_fatal_one_stays_an_error(kept: Kept) -> None:
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    log = logging.getLogger("aiokafka.consumer.group_coordinator")
    log.error("Group Coordinator Request failed: %s", CoordinatorNotAvailableError())  # what a fresh broker answers
    log.error("Group Coordinator Request failed: %s", GroupAuthorizationFailedError())
    log.error("Unexpected error in coordinator routine")
    assert [(r.levelname, r.getMessage().split(":")[0]) for r in kept.records] == [
        ("WARNING", "Group Coordinator Request failed"),
        ("ERROR", "Group Coordinator Request failed"),
        ("ERROR", "Unexpected error in coordinator routine"),
    ]


def test_without_verbose_the_retried_error_is_not_shown(kept: Kept) -> None:
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # what `tickflow` without -v sets
    log = logging.getLogger("aiokafka.consumer.group_coordinator")
    log.error("Group Coordinator Request failed: %s", CoordinatorNotAvailableError())
    log.error("Group Coordinator Request failed: %s", GroupAuthorizationFailedError())
    assert [r.levelname for r in kept.records] == ["ERROR"]


def test_other_loggers_are_left_alone(kept: Kept) -> None:
    record = logging.LogRecord("tickflow.engine", logging.ERROR, __file__, 1, "%s", (CoordinatorNotAvailableError(),),
                               None)
    assert RetriedKafkaErrors().filter(record) and record.levelname == "ERROR"
