"""RGB weights for a model that reads another number of input channels (``in_chans != 3``)."""

from __future__ import annotations

import math

from torch import Tensor

STEM_WEIGHT = "stem.conv.weight"  # the first convolution, the only weight that depends on in_chans


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """The first convolution's RGB weights ``[O, 3, k, k]`` turned into ``[O, in_chans, k, k]`` (timm's rule).

    One channel: the sum over R, G and B, so a gray image gives what the RGB model gives for that
    gray replicated to three channels. More (or two): R, G, B repeated in turn and scaled by
    ``3 / in_chans``, so inputs of equal channels keep the RGB sum's scale.
    """
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected RGB convolution weights [O, 3, k, k], got {tuple(weight.shape)}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if in_chans == 3:
        return weight
    dtype = weight.dtype
    weight = weight.float()  # fp16/bf16 checkpoints: sum in float32
    if in_chans == 1:
        adapted = weight.sum(dim=1, keepdim=True)  # [O, 3, k, k] -> [O, 1, k, k]
    else:
        repeats = math.ceil(in_chans / 3)
        # [O, 3, k, k] -> [O, 3 * repeats, k, k] -> [O, in_chans, k, k]
        adapted = weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (3 / in_chans)
    return adapted.to(dtype)
