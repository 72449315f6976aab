"""Frame stacking as recurrent state: the last `k - 1` frames of each env travel with h and c."""

from __future__ import annotations

import torch

__all__ = ["stack_frames"]


def stack_frames(
    frames: torch.Tensor, history: torch.Tensor, episode_start: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """frames [T, B, C, H, W], history [k-1, B, C, H, W] (oldest first), episode_start [T, B]
    -> stacked [T, B, k*C, H, W] (oldest frame's channels first), new history.

    At an episode start the history is zeroed first, as SB3's VecFrameStack does.
    """
    steps, batch = episode_start.shape
    if history.shape[0] == 0:
        return frames, history
    stacked = []
    for t in range(steps):
        history = torch.where(episode_start[t].view(1, batch, 1, 1, 1), 0, history)
        window = torch.cat((history, frames[t : t + 1]))
        stacked.append(window.transpose(0, 1).flatten(1, 2))
        history = window[1:]
    return torch.stack(stacked), history
