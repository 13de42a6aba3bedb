"""The roles and their Kafka plumbing: the engine, step workers, triggers, snapshots, claim-check, live reads.

Each role is a consumer group of its own; ``tickflow.node`` hosts any set of them in one process.
"""
