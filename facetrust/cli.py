"""`facetrust`: one console script, one thin subcommand per library call.

Each subcommand lives in its own module and registers itself on :data:`app`.
Modules that need torch (training) or fastapi (serving) import them inside the
command body only, so `facetrust scan` stays torch-free.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="facetrust",
    help="Find every face in images and videos and score it as real or manipulated.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Find every face in images and videos and score it as real or manipulated."""
    # A callback keeps `facetrust` a command group even while only one subcommand exists.


def _register() -> None:
    from facetrust import _scan, _serve, _train

    for module in (_scan, _serve, _train):
        module.register(app)


def main() -> None:
    """Entry point of the `facetrust` console script."""
    try:
        _register()
    except KeyboardInterrupt:  # Ctrl-C while the modules load: no traceback
        sys.exit(130)
    app()
