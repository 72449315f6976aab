"""Which weights a response was computed with: the one weights-version type of the whole package.

Plain Python, so the light client, the models and the server share it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WeightsVersion"]


@dataclass(frozen=True)
class WeightsVersion:
    """`number` counts the server's installs (1: the weights it loaded at start); `weights_hash` is
    the sha256 of those weights; `learner_step` the training step a push named, if it named one."""

    number: int
    weights_hash: str
    learner_step: int | None = None
