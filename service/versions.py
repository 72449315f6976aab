"""Which weights versions a client-held state may come from.

A state sent back is accepted when its weights are the ones serving, or when it names this server's
lineage (the hash of the weights it started with) and one of the last `window` versions, with the
weights that version served. Anything else is another model's state: FAILED_PRECONDITION.
"""

from __future__ import annotations

from collections import deque

from vidlstm.models import WeightsVersion

from .errors import FailedPrecondition

__all__ = ["VersionHistory"]


class VersionHistory:
    def __init__(self, lineage: str, first: WeightsVersion, *, window: int) -> None:
        if window < 0:
            raise ValueError(f"state version window must be >= 0, got {window}")
        self.lineage = lineage
        self.window = window
        self._versions: deque[WeightsVersion] = deque([first], maxlen=window + 1)

    @property
    def current(self) -> WeightsVersion:
        return self._versions[-1]

    def record(self, version: WeightsVersion) -> None:
        """A version just installed; the oldest falls out of the window."""
        self._versions.append(version)

    def check_state(self, weights_hash: str, lineage: str, version: int) -> WeightsVersion:
        """The version that made a state, refusing one made by weights other than the current ones
        or the window's (a state of the current weights counts as theirs, whatever it says)."""
        versions = tuple(self._versions)  # a snapshot: installs append on the model thread
        current = versions[-1]
        if weights_hash == current.weights_hash:
            return current
        if lineage == self.lineage:
            for known in versions:
                if known.number == version and known.weights_hash == weights_hash:
                    return known
        if lineage == self.lineage and 0 < version < versions[0].number:
            why = (
                f"state comes from weights version {version}, more than {self.window} installs before "
                f"the version serving ({current.number}; --state-version-window {self.window})"
            )
        else:
            why = (
                f"state comes from model {weights_hash[:12] or '<none>'} (lineage "
                f"{lineage[:12] or '<none>'}, version {version}), this server serves "
                f"{current.weights_hash[:12]} (lineage {self.lineage[:12]}, version {current.number})"
            )
        raise FailedPrecondition(f"{why}; start from zero state (leave it unset) or use the right server")
