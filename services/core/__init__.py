"""The pure core: what happens next to a run, a slot or a stack, given its state, an input and the time.

``state`` (a run's state and ``evolve``), ``interpreter`` (walks a run's node tree), ``decider`` (inputs →
events and outgoing messages), ``slots`` (per-key concurrency) and ``stacks`` (agent stacks). Nothing here reads a
clock, draws a random number, invents an id or touches I/O; ``tests/unit/test_imports.py`` checks it transitively.
"""
