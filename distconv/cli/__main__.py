"""``python -m distconv.cli``: the ``distconv`` command."""

from distconv.cli import main

if __name__ == "__main__":
    main()
