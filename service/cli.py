"""`vidlstm serve`: settings from flags, environment and config file, then the server runs until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from pydantic import ValidationError

from .logs import configure_logging
from .server import serve
from .settings import ENV_PREFIX, ServerSettings

__all__ = ["build_parser", "load_settings", "serve_main"]


def build_parser() -> argparse.ArgumentParser:
    """One flag per setting; a flag left out leaves it to the environment, the file or the default."""
    parser = argparse.ArgumentParser(
        prog="vidlstm serve",
        description="Serve CNN+LSTM embeddings over gRPC. Every flag can also be set as an environment"
        f" variable ({ENV_PREFIX}PORT=50051, {ENV_PREFIX}AUTH_TOKENS=a,b) or in the --config file.",
    )
    for name, field in ServerSettings.model_fields.items():
        if name in ("auth_tokens", "admin_tokens"):
            continue  # secrets stay out of argv (visible in ps): use the env variable or auth_tokens_file
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            default=argparse.SUPPRESS,
            metavar=name.upper(),
            help=f"{field.description} (default: {field.default}; env {ENV_PREFIX}{name.upper()})",
        )
    return parser


def load_settings(argv: list[str]) -> ServerSettings:
    """Settings from flags over env over file; a bad value exits with the setting's name and the fix."""
    flags: dict[str, Any] = {
        name: None if value.lower() == "none" else value
        for name, value in vars(build_parser().parse_args(argv)).items()
    }
    try:
        return ServerSettings(**flags)
    except ValidationError as error:
        problems = "\n".join(
            f"  {'.'.join(map(str, e['loc']))}: {e['msg']} (got {e['input']!r})" for e in error.errors()
        )
        raise SystemExit(f"vidlstm serve: invalid settings\n{problems}") from None
    except (ValueError, OSError) as error:
        raise SystemExit(f"vidlstm serve: {error}") from None


def serve_main(argv: list[str]) -> int:
    settings = load_settings(argv)
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except (OSError, ValueError) as error:  # a port in use; a missing, unreadable or unfitting model file
        raise SystemExit(f"vidlstm serve: {error}") from None
    return 0
