"""``python -m autoquant.cli``: the same as the ``autoquant`` command."""

from autoquant.cli._app import main

main()
