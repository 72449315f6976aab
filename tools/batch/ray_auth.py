"""Ray token authentication for `--ray-address`, set up before Ray is imported: Ray reads
RAY_AUTH_MODE once, when it is first imported, so setting it later has no effect."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["use_token_file"]


def use_token_file(token_file: Path) -> None:
    """Turns token authentication on for this process with the cluster's token. Ray's own variables
    (RAY_AUTH_MODE=token with RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH) work too. Ray turns it on by itself
    only for a cluster it finds without an address, and a driver in token mode hangs on a cluster
    without it, so it is never guessed."""
    try:
        token = token_file.read_text().strip()
    except OSError as error:
        raise ValueError(
            f"--ray-token-file {token_file}: {error.strerror}; give the file with the cluster's token"
        ) from None
    if not token:
        raise ValueError(f"--ray-token-file {token_file} is empty; give the file with the cluster's token")
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_file.resolve())
    os.environ["RAY_AUTH_MODE"] = "token"
