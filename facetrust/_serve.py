"""`facetrust serve`: the HTTP service (uvicorn + FastAPI, no torch), and `facetrust api-key`.

Settings come from ``FACETRUST_*`` environment variables (see ``serving/settings.py``);
the flags below override them. Invalid settings, an unusable model or an address that
cannot be listened on (unknown host, port in use) stop the command with a clear message and
exit status 2, before anything listens.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any

import typer

EXIT_BAD_CONFIG = 2


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging config plus the audit logger (one bare JSON line per request)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["audit"] = {"format": "%(message)s"}
    config["handlers"]["audit"] = {
        "class": "logging.StreamHandler",
        "formatter": "audit",
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["facetrust.audit"] = {"handlers": ["audit"], "level": "INFO", "propagate": False}
    config["loggers"]["facetrust.serving"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


def bind_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (unknown host, port in use, ...), else ``None``.

    Checked before the workers start, so such a mistake exits 2 like any other bad setting.
    """
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn binds
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except (socket.gaierror, UnicodeError) as exc:
            return f"cannot resolve host {host!r}: {getattr(exc, 'strerror', None) or exc}"
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def serve(
    host: Annotated[
        str | None, typer.Option(help="address to bind (env FACETRUST_HOST; default 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (env FACETRUST_PORT; default 8000)")] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="analysis worker processes = concurrent analyses (env FACETRUST_WORKERS)"),
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="ONNX classifier with a model card (env FACETRUST_MODEL)")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="log level (env FACETRUST_LOG_LEVEL)")] = None,
) -> None:
    """Serve the HTTP API (POST /v1/analyze, /v1/jobs, /healthz, /readyz, /metrics, /docs).

    Every other setting comes from FACETRUST_* environment variables (API keys, upload
    size, queue, timeouts, memory limit, job TTL, temp dir): see serving/HTTP_API.md.
    """
    from pydantic import ValidationError

    from detector.card import ModelCardError
    from serving.settings import ServeSettings, format_validation_error

    overrides = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "workers": workers,
            "model": model,
            "log_level": log_level,
        }.items()
        if v is not None
    }
    try:
        settings = ServeSettings(**overrides)
    except ValidationError as exc:
        typer.echo(format_validation_error(exc), err=True)
        raise typer.Exit(EXIT_BAD_CONFIG) from None
    problem = bind_problem(settings.host, settings.port)
    if problem:
        typer.echo(f"cannot serve: {problem}", err=True)
        raise typer.Exit(EXIT_BAD_CONFIG)
    import uvicorn

    from serving.app import create_app

    try:
        app = create_app(settings)
    except ModelCardError as exc:
        typer.echo(f"cannot serve: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_CONFIG) from None
    if settings.allow_no_auth and not settings.api_keys:
        typer.echo(
            f"WARNING: development mode, no API key required (bound to {settings.host} only)", err=True
        )
    if settings.test_faults:
        typer.echo("WARNING: FACETRUST_TEST_FAULTS is on: never use this in production", err=True)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=_log_config(settings.log_level),
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


def api_key(
    key_id: Annotated[str, typer.Argument(help="a name for the key, e.g. 'alice' (logged, not secret)")],
) -> None:
    """Make a new API key: prints the key (give it to the client) and the FACETRUST_API_KEYS entry."""
    from serving.auth import hash_key, new_key
    from serving.settings import check_key_id

    try:
        check_key_id(key_id)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_CONFIG) from None
    key = new_key()
    entry = f"{key_id}:{hash_key(key)}"
    typer.echo(f"key (send as X-API-Key; shown once): {key}")
    typer.echo(f"server entry (append to FACETRUST_API_KEYS, comma-separated): {entry}")


def register(app: typer.Typer) -> None:
    """Register `serve` and `api-key` on the `facetrust` app."""
    app.command("serve")(serve)
    app.command("api-key")(api_key)
