"""ClickHouse projections of the log: migrations, pure event → row mapping, stores, the projector, rebuilds.

Import the module you need (``tickflow.projections.store``, ``.projector``, ``.rebuild`` …): this package itself
loads nothing, so the pure modules (``rows``, ``facts``, ``fold``, ``models``) come without ClickHouse or Kafka.
"""
