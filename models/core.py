"""The recurrent core: an LSTM over time-major features with explicit state and resets."""

from __future__ import annotations

import itertools

import torch
from torch import nn

__all__ = ["LSTMCore"]


class LSTMCore(nn.Module):
    """`nn.LSTM` with CleanRL ppo_atari_lstm reset semantics.

    Before step t, the state of every env b with `episode_start[t, b]` is zeroed, so the first
    frame of an episode never sees the previous episode. Runs between resets go through the fused
    `nn.LSTM` (fast over long sequences); single steps go through `torch.lstm_cell` with the same
    weights (several times faster than `nn.LSTM` at T=1 on CPU).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers)
        self.out_size = hidden_size

    def state_shape(self) -> tuple[int, int]:
        """Shape of `h` and `c` per env: [num_layers, hidden_size] (batch dim 1 in tensors)."""
        return (self.lstm.num_layers, self.lstm.hidden_size)

    def forward(
        self,
        features: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor],
        episode_start: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """features [T, B, F], state (h, c) each [L, B, H], episode_start [T, B] bool
        -> outputs [T, B, H], final state (h, c)."""
        outputs = []
        h, c = state
        for start, end in _segments(episode_start):
            # Set, not multiplied: a reset must clear any state, NaN included (0 * NaN is NaN).
            reset = episode_start[start].view(1, -1, 1)
            h = torch.where(reset, 0.0, h)
            c = torch.where(reset, 0.0, c)
            if end - start == 1:
                out, (h, c) = self._step(features[start], (h, c))
            else:
                out, (h, c) = self.lstm(features[start:end], (h, c))
            outputs.append(out)
        return torch.cat(outputs), (h, c)

    def _step(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        h_out, c_out = [], []
        for layer in range(self.lstm.num_layers):
            x, c = torch.lstm_cell(
                x,
                (state[0][layer], state[1][layer]),
                getattr(self.lstm, f"weight_ih_l{layer}"),
                getattr(self.lstm, f"weight_hh_l{layer}"),
                getattr(self.lstm, f"bias_ih_l{layer}"),
                getattr(self.lstm, f"bias_hh_l{layer}"),
            )
            h_out.append(x)
            c_out.append(c)
        return x.unsqueeze(0), (torch.stack(h_out), torch.stack(c_out))


def _segments(episode_start: torch.Tensor) -> list[tuple[int, int]]:
    """Splits [0, T) at every step t > 0 where some env starts an episode."""
    steps = episode_start.shape[0]
    if steps == 1:
        return [(0, 1)]
    cuts = (torch.nonzero(episode_start[1:].any(dim=1)).flatten() + 1).tolist()
    bounds = [0, *cuts, steps]
    return list(itertools.pairwise(bounds))
