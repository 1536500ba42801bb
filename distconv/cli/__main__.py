"""``python -m distconv.cli``: the ``distconv`` command."""

from distconv.cli import main

main()
