"""``python -m tickflow.cli``: the ``tickflow`` command."""

from tickflow.cli.main import main

main()
