#!/usr/bin/env bash
# One-node Apache Kafka (KRaft) for development, tests and the demo: a shortcut to the launcher that ships inside
# the tickflow package (`tickflow broker install|start|stop|status|reset`), for those who reach for infra/ first.
# It uses the checkout's virtualenv (`make install` creates it); set TICKFLOW_PYTHON to use another interpreter.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "${TICKFLOW_PYTHON:-$REPO/.venv/bin/python}" -m tickflow.broker "$@"
