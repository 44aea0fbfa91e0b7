"""Placeholder: subcommands are registered here by their owning issue."""

import typer


def register(app: typer.Typer) -> None:
    """Register this module's subcommands on the `facetrust` app."""
