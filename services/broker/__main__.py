"""``python -m tickflow.broker install|start|stop|status|reset|bootstrap`` (``infra/kafka.sh`` forwards here)."""

from .launcher import main

if __name__ == "__main__":
    raise SystemExit(main())
