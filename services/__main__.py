"""``python -m tickflow``: the ``tickflow`` command, for environments without the console script on the PATH."""

from tickflow.cli.main import main

main()
