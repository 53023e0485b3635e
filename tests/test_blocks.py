"""The unfold/fold of the MobileViT block, checked against the paper by hand."""

from __future__ import annotations

import pytest
import torch

from mobilevit_torch.blocks import InvertedResidual, MobileViTBlock, fold_patches, unfold_patches
from mobilevit_torch.layers import DropPath


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


def test_drop_path_drops_whole_samples_and_rescales_the_rest() -> None:
    drop = DropPath(0.25).train()
    x = torch.ones(4000, 3, 2, 2)
    out = drop(x)
    per_sample = out.flatten(1)
    assert ((per_sample == 0).all(dim=1) | (per_sample == 1 / 0.75).all(dim=1)).all()  # all or nothing, per sample
    dropped = (per_sample[:, 0] == 0).float().mean().item()
    assert abs(dropped - 0.25) < 0.03 and abs(out.mean().item() - 1.0) < 0.05  # the expectation is kept
    assert drop.eval()(x) is x
    with pytest.raises(ValueError, match=r"DropPath rate must be in \[0, 1\), got 1.0"):
        DropPath(1.0)


def test_blocks_drop_their_residual_branches_only_in_training() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 8, 4, 4)
    plain = InvertedResidual(8, 8, stride=1, expand_ratio=2)
    dropping = InvertedResidual(8, 8, stride=1, expand_ratio=2, drop_path=0.5)
    dropping.load_state_dict(plain.state_dict())
    with torch.no_grad():
        plain_out, out = plain.train()(x), dropping.train()(x)
        # A dropped sample is its shortcut alone; a kept one is shortcut + branch / 0.5.
        dropped = (out - x).flatten(1).abs().amax(dim=1) == 0
        assert 0 < int(dropped.sum()) < 16
        torch.testing.assert_close(out[~dropped], x[~dropped] + (plain_out - x)[~dropped] / 0.5)
        torch.testing.assert_close(dropping.eval()(x), plain.eval()(x))
    # No shortcut beside a down-sampling block: nothing to drop.
    assert isinstance(InvertedResidual(8, 16, stride=2, expand_ratio=2, drop_path=0.5).drop_path, torch.nn.Identity)

    block = MobileViTBlock(6, transformer_dim=8, ffn_dim=16, num_layers=2, num_heads=2, patch_size=2, drop_path=0.3)
    rates = [m.rate for m in block.modules() if isinstance(m, DropPath)]
    assert rates == [0.3] * 4  # attention and MLP branch of each transformer layer


def test_attention_is_softmax_of_scaled_dot_products_per_head() -> None:
    """MultiHeadAttention against the formula written out: per head softmax(q k^T / sqrt(d_head)) v, heads
    concatenated, then the output projection. Weights of unit scale, so the attention is far from uniform."""
    from mobilevit_torch.layers.attention import MultiHeadAttention

    attention = MultiHeadAttention(8, num_heads=2).eval()
    with torch.no_grad():
        for parameter in attention.parameters():
            parameter.normal_()
    x = torch.randn(3, 5, 8)  # [B, N, d]
    q, k, v = (x @ attention.qkv.weight.T + attention.qkv.bias).split(8, dim=-1)  # each [B, N, d]
    heads = []
    for h in range(2):
        part = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(q[..., part] @ k[..., part].transpose(1, 2) / 4**0.5, dim=-1)  # [B, N, N]
        assert weights.max() > 0.5  # some token attends mostly to one other: the scale matters
        heads.append(weights @ v[..., part])
    expected = torch.cat(heads, dim=-1) @ attention.proj.weight.T + attention.proj.bias
    with torch.no_grad():
        torch.testing.assert_close(attention(x), expected, atol=1e-5, rtol=1e-5)
