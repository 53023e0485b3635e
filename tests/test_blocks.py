"""The unfold/fold of the MobileViT block, checked against the paper by hand."""

from __future__ import annotations

import pytest
import torch

from mobilevit_torch.blocks import MobileViTBlock, fold_patches, unfold_patches


@pytest.mark.parametrize("shape", [(2, 5, 8, 6), (1, 3, 4, 4), (3, 7, 2, 10)])
def test_unfold_then_fold_is_identity(shape: tuple[int, int, int, int]) -> None:
    x = torch.randn(shape)
    batch, _, height, width = shape
    patches = unfold_patches(x, 2, 2)
    assert patches.shape == (batch * 4, height * width // 4, shape[1])
    assert torch.equal(fold_patches(patches, batch, height, width, 2, 2), x)


def test_unfold_puts_each_pixel_of_a_patch_in_its_own_sequence() -> None:
    # One 4x4 single-channel image whose pixel value encodes its position: 10*row + col.
    x = torch.tensor([[10.0 * r + c for c in range(4)] for r in range(4)]).reshape(1, 1, 4, 4)
    patches = unfold_patches(x, 2, 2)  # [B*P, N, C] = [4, 4, 1]
    # Sequence p holds pixel (i, j) = divmod(p, 2) of every patch; patches in row-major order,
    # patch n covering rows 2*(n//2)+{0,1} and cols 2*(n%2)+{0,1} (paper Fig. 1b).
    expected = torch.tensor(
        [
            [0, 2, 20, 22],  # p=0: top-left pixel of each of the four patches
            [1, 3, 21, 23],  # p=1: top-right
            [10, 12, 30, 32],  # p=2: bottom-left
            [11, 13, 31, 33],  # p=3: bottom-right
        ],
        dtype=torch.float32,
    )
    assert torch.equal(patches[..., 0], expected)


def test_transformer_only_mixes_patches_at_the_same_pixel_position() -> None:
    # Changing one pixel may change, through attention, only pixels at the same in-patch position
    # (plus the local 3x3 convolutions around it): probe with the convs made pointwise.
    block = MobileViTBlock(4, transformer_dim=8, ffn_dim=16, num_layers=1, num_heads=2, patch_size=2).eval()
    x = torch.randn(1, 8, 8, 8)
    patches = unfold_patches(x, 2, 2)
    changed = patches.clone()
    changed[0, 3] += 1.0  # position p=0, patch 3
    out_a, out_b = block.transformer(patches), block.transformer(changed)
    differs = (out_a - out_b).abs().amax(dim=(1, 2)) > 0
    assert differs.tolist() == [True, False, False, False]


@pytest.mark.parametrize("size", [(7, 9), (5, 5), (8, 8)])
def test_block_handles_feature_maps_not_multiple_of_patch(size: tuple[int, int]) -> None:
    block = MobileViTBlock(6, transformer_dim=8, ffn_dim=16, num_layers=1, num_heads=2, patch_size=2).eval()
    x = torch.randn(2, 6, *size)
    assert block(x).shape == x.shape
