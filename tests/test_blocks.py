"""Moonshine cheap blocks: shapes, strides, closed-form parameter counts, WRN substitution."""
import pytest
import torch
from torch import nn

from compresslab.errors import UserError
from compresslab.models import create_model
from compresslab.models.blocks import all_blocks, block_params, make_block, parse_block


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("c_in, c_out, stride", [(64, 64, 1), (32, 64, 2), (64, 128, 2)])
def test_every_block_shape_stride_and_parameter_count(dim, c_in, c_out, stride):
    size = 16
    x = torch.randn(2, c_in, *([size] * dim))
    built = 0
    for name in all_blocks():
        try:
            block = make_block(name, c_in, c_out, stride, dim)
        except UserError:
            with pytest.raises(UserError):  # the count refuses exactly what the builder refuses
                block_params(name, c_in, c_out, dim)
            continue
        built += 1
        assert block(x).shape == (2, c_out, *([size // stride] * dim)), name
        assert n_params(block) == block_params(name, c_in, c_out, dim), name
        convs = [m for m in block.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
        assert all(c.bias is None for c in convs), name
        assert not isinstance(list(block.modules())[-1], (nn.BatchNorm1d, nn.BatchNorm2d)), name
    assert built >= 40


def test_closed_forms_by_hand():
    # G8B2, 32->32, 2-D: mid 16, 3x3 with 16/8 = 2 groups
    assert block_params("G8B2", 32, 32, 2) == 32 * 16 + 32 + 16 * 8 * 9 + 32 + 16 * 32
    # A4B4, 64->64, 1-D: mid 16, 4 groups of 4 channels, kernel 3
    assert block_params("A4B4", 64, 64, 1) == 64 * 16 + 32 + 16 * 4 * 3 + 32 + 16 * 64
    # DConv 32->64, 2-D: depthwise 3x3 + BN + 1x1
    assert block_params("DConv", 32, 64, 2) == 32 * 9 + 64 + 32 * 64
    # DConvG4 and DConvA2, 32->32: 8 groups of 4, 2 groups of 16
    assert block_params("DConvG4", 32, 32, 2) == 32 * 4 * 9 + 64 + 32 * 32
    assert block_params("DConvA2", 32, 32, 2) == 32 * 16 * 9 + 64 + 32 * 32
    # DConvB4 32->64: mid 16, depthwise 3x3 on mid
    assert block_params("DConvB4", 32, 64, 2) == 32 * 16 + 32 + 16 * 9 + 32 + 16 * 64
    assert block_params("Conv", 16, 32, 2) == 16 * 32 * 9
    g = make_block("G8B2", 32, 32, 1, 2)[3]
    assert g.groups == 2 and g.kernel_size == (3, 3)


def test_parse_block_errors():
    assert parse_block("DConvB8").bottleneck == 8
    for bad in ("Ghost", "G3B2", "ConvB32", "DConvX2", ""):
        with pytest.raises(UserError, match="block"):
            parse_block(bad)
    with pytest.raises(UserError, match="cannot split"):
        make_block("G16B16", 32, 32, 1, 2)  # mid = 2 channels, groups of 16


def test_wrn_substitutes_both_convs_of_every_block_and_nothing_else():
    plain = create_model("wrn-40-2", num_classes=10, in_channels=3, input_shape=(3, 32, 32), block="Conv")
    assert n_params(plain) == 2_243_546
    cheap = create_model("wrn-16-2", num_classes=10, in_channels=3, input_shape=(3, 32, 32), block="G8B2")
    base = create_model("wrn-16-2", num_classes=10, in_channels=3, input_shape=(3, 32, 32))
    convs = 0
    for name, b in base.named_modules():
        if name.endswith(("conv1", "conv2")) and "group" in name:
            convs += 1
            c = cheap.get_submodule(name)
            assert isinstance(b, nn.Conv2d) and isinstance(c, nn.Sequential)
            assert n_params(c) == block_params("G8B2", b.in_channels, b.out_channels, 2)
    assert convs == 12
    assert cheap.stem.weight.shape == base.stem.weight.shape and cheap.fc.weight.shape == base.fc.weight.shape
    assert cheap(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_mixed_network_and_1d_wrn():
    kinds = ["Conv", "DConv", "ConvB2", "G4B2", "A2B4", "DConvB2"]
    net = create_model("wrn1d-16-2", num_classes=10, in_channels=1, input_shape=(1, 40), block=kinds)
    blocks = [b for g in (net.group1, net.group2, net.group3) for b in g]
    assert isinstance(blocks[0].conv1, nn.Conv1d)
    assert isinstance(blocks[1].conv1[0], nn.Conv1d) and blocks[1].conv1[0].groups == 32  # depthwise
    assert blocks[3].conv2[3].groups == 64 // 2 // 4
    assert net(torch.randn(3, 1, 40)).shape == (3, 10)
    with pytest.raises(UserError, match="6 blocks"):
        create_model("wrn-16-1", num_classes=10, in_channels=3, block=["Conv"] * 3)
    with pytest.raises(UserError, match="unknown block"):
        create_model("wrn-16-1", num_classes=10, in_channels=3, block="Ghost")


@pytest.mark.parametrize("name", ["DConv+lowrank8", "DConvB2+acdc2", "DConv+shuffle4", "DConvG4+hashed0.25",
                                  "DConvA2+lowrank4"])
@pytest.mark.parametrize("dim", [1, 2])
def test_structured_pointwise_after_the_depthwise_conv(name, dim):
    block = make_block(name, 32, 64, 2, dim)
    x = torch.randn(2, 32, *([8] * dim))
    assert block(x).shape == (2, 64, *([4] * dim))
    assert n_params(block) == block_params(name, 32, 64, dim)
    assert block_params(name, 32, 64, dim) < block_params(name.split("+")[0], 32, 64, dim)
    net = create_model("wrn1d-16-2", num_classes=10, in_channels=1, input_shape=(1, 40), block=name)
    assert net(torch.randn(2, 1, 40)).shape == (2, 10)


@pytest.mark.parametrize("bad", ["Conv+lowrank8", "G8B2+acdc2", "DConv+fft4", "DConv+lowrank0", "DConv+hashed2"])
def test_structured_pointwise_errors(bad):
    with pytest.raises(UserError):
        parse_block(bad)
