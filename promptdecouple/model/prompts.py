"""Deep prompts: learnable tokens fed into the first `depth` layers of one transformer tower."""

from __future__ import annotations

import torch
from torch import nn


class DeepPrompts(nn.Module):
    """`depth` sets of `length` learnable tokens of width `width`, one set per layer.

    Kept as a single `(depth, length, width)` parameter so a tower's prompts are one tensor to
    freeze, save or inspect. `length == 0` means no prompts (and no parameter).
    """

    def __init__(self, length: int, depth: int, width: int, init_std: float = 0.02) -> None:
        super().__init__()
        if length < 0:
            raise ValueError(f"prompt length must be >= 0, got {length}")
        if length > 0 and depth < 1:
            raise ValueError(f"prompt depth must be >= 1 when prompts are used, got {depth}")
        self.length = length
        self.depth = depth if length > 0 else 0
        self.tokens = nn.Parameter(torch.empty(self.depth, length, width)) if length > 0 else None
        if self.tokens is not None:
            nn.init.normal_(self.tokens, std=init_std)

    def __len__(self) -> int:
        return self.length

    def at_layer(self, layer: int, batch_size: int, dtype: torch.dtype) -> torch.Tensor | None:
        """The prompts that enter `layer`, expanded over the batch; None past the prompted depth."""
        if self.tokens is None or layer >= self.depth:
            return None
        return self.tokens[layer].to(dtype).unsqueeze(0).expand(batch_size, -1, -1)

    def extra_repr(self) -> str:
        width = self.tokens.shape[-1] if self.tokens is not None else 0
        return f"length={self.length}, depth={self.depth}, width={width}"
