"""The `facetrust` console script's entry point (also `python -m facetrust`).

It imports the command line inside a ``try``: a Ctrl-C while Python is still loading it
(typer, rich, the subcommands: the first tenth of a second or so) ends the command with
status 130, as later, instead of a traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run the `facetrust` command."""
    try:
        from facetrust.cli import main as run
    except KeyboardInterrupt:
        sys.exit(130)
    run()
