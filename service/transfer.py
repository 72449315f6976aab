"""Host <-> device copies of a batch: frames in through one pinned buffer, results out in one copy.

From pageable memory a host->device copy is synchronous whatever `non_blocking` says; from pinned
(page-locked) memory it is a DMA the host does not wait for. And each device->host copy waits for
the device to finish, so a batch pays that wait once, not once per job or tensor. On CPU nothing
is copied: tensors share the numpy arrays' memory.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["Transfers"]


def _joined_shape(arrays: list[np.ndarray]) -> tuple[int, ...]:
    first = arrays[0].shape
    return (first[0], sum(array.shape[1] for array in arrays), *first[2:])


class Transfers:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pinned = device.type == "cuda"
        self._staging = torch.empty(0, dtype=torch.uint8)
        self._copied: torch.cuda.Event | None = None  # the last copy out of `_staging`

    def frames_in(self, parts: list[list[np.ndarray]]) -> list[torch.Tensor]:
        """Each part's uint8 arrays joined on dimension 1 ([T, n_i, ...] -> [T, n, ...]), on the device."""
        if not self._pinned:
            return [
                torch.from_numpy(np.ascontiguousarray(np.concatenate(arrays, axis=1))) for arrays in parts
            ]
        shapes = [_joined_shape(arrays) for arrays in parts]
        sizes = [math.prod(shape) for shape in shapes]
        staging = self._stage(sum(sizes))
        for arrays, chunk, shape in zip(parts, torch.split(staging, sizes), shapes, strict=True):
            np.concatenate(arrays, axis=1, out=chunk.numpy().reshape(shape))
        on_device = staging.to(self.device, non_blocking=True)
        self._copied = torch.cuda.current_stream(self.device).record_event()
        return [chunk.view(shape) for chunk, shape in zip(torch.split(on_device, sizes), shapes, strict=True)]

    def _stage(self, size: int) -> torch.Tensor:
        """The pinned buffer, grown to `size` bytes, once the previous copy out of it is done."""
        if self._copied is not None:
            self._copied.synchronize()
        if self._staging.numel() < size:
            self._staging = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        return self._staging[:size]

    def to_host(self, tensors: list[torch.Tensor]) -> list[np.ndarray]:
        """Device tensors -> numpy arrays, with one copy per dtype."""
        if self.device.type == "cpu":
            return [tensor.numpy() for tensor in tensors]
        arrays: list[np.ndarray] = [np.empty(0)] * len(tensors)
        for dtype in {tensor.dtype for tensor in tensors}:
            members = [i for i, tensor in enumerate(tensors) if tensor.dtype == dtype]
            flat = torch.cat([tensors[i].reshape(-1) for i in members]).cpu().numpy()
            offset = 0
            for i in members:
                count = tensors[i].numel()
                arrays[i] = flat[offset : offset + count].reshape(tensors[i].shape)
                offset += count
        return arrays
