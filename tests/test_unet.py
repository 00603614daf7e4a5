import pytest
import torch

from ddmr.errors import ConfigError
from ddmr.nn import UNet, UNetConfig

SMALL = UNetConfig(encoder=(4, 8, 8), head=(4,))


def test_paper_unet_output_shape_and_size():
    model = UNet()
    assert model.config.encoder == (32, 64, 128, 256, 512, 1024)
    with torch.inference_mode():
        out = model(torch.rand(1, 1, 64, 64, 64), torch.rand(1, 1, 64, 64, 64))
    assert out.shape == (1, 3, 64, 64, 64)
    # starts near the identity
    assert out.abs().max() < 1e-2
    assert model.parameter_count() == 84_921_011  # reported in the README


@pytest.mark.parametrize("half", [False, True])
def test_uneven_sizes_are_padded_and_cropped(half):
    config = UNetConfig(encoder=(4, 8, 8), head=(4,), flow_resolution="half" if half else "full")
    out = UNet(config)(torch.rand(2, 1, 13, 17, 20), torch.rand(2, 1, 13, 17, 20))
    assert out.shape == (2, 3, 13, 17, 20)


def test_uneven_size_refused_when_padding_off():
    model = UNet(UNetConfig(encoder=(4, 8), head=(4,), pad_input=False))
    with pytest.raises(ConfigError, match="multiple of 4"):
        model(torch.rand(1, 1, 10, 12, 12), torch.rand(1, 1, 10, 12, 12))


def test_diffeomorphic_mode_integrates():
    torch.manual_seed(0)
    model = UNet(UNetConfig(encoder=(4, 8), head=(4,), diffeomorphic=True, output_init_std=0.5))
    out = model(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16))
    assert out.shape == (1, 3, 16, 16, 16) and torch.isfinite(out).all()


def test_layer_groups_cover_all_parameters():
    model = UNet(SMALL)
    grouped = {id(p) for mods in model.layer_groups().values() for m in mods
               for p in m.parameters()}
    assert grouped == {id(p) for p in model.parameters()}


def test_config_round_trip():
    config = UNetConfig(encoder=(8, 16), decoder=(16, 8), head=(8, 8), flow_resolution="half")
    assert UNetConfig.from_dict(config.to_dict()) == config


def test_mismatched_decoder_refused():
    with pytest.raises(ConfigError):
        UNet(UNetConfig(encoder=(4, 8), decoder=(8,)))


def test_histogram_matching_undoes_monotone_contrast_changes():
    from ddmr.nn.unet import match_histogram

    torch.manual_seed(0)
    fixed = torch.rand(1, 1, 8, 8, 8)
    moving = torch.rand(1, 1, 8, 8, 8)
    changed = 0.1 + 0.8 * moving**2.0  # gamma and brightness: monotone
    assert torch.equal(match_histogram(changed, fixed), match_histogram(moving, fixed))
    assert torch.equal(match_histogram(fixed**0.5, fixed), fixed)
    network = UNet(UNetConfig(encoder=(4, 8), head=(4,), match_histograms=True,
                              input_features="demons", output_init_std=0.1))
    assert torch.equal(network(fixed, changed), network(fixed, moving))


def test_a_known_shift_is_recovered():
    """Trained on one pair whose moving image is the fixed one moved by a constant shift,
    by image similarity alone, the network's field becomes that shift where the image
    has structure."""
    from ddmr.spatial.warp import warp_image

    torch.manual_seed(0)
    axes = torch.meshgrid(*[torch.arange(16.0)] * 3, indexing="ij")
    shift = torch.tensor([1.5, -1.0, 0.5])

    def blobs(offset):
        out = torch.zeros(16, 16, 16)
        for centre, width in (((6.0, 7.0, 8.0), 2.5), ((10.0, 9.0, 7.0), 2.0),
                              ((7.0, 10.0, 10.0), 1.5)):
            r2 = sum((a - c - o) ** 2 for a, c, o in zip(axes, centre, offset, strict=True))
            out += torch.exp(-r2 / (2 * width**2))
        return out[None, None]

    fixed, moving = blobs((0.0, 0.0, 0.0)), blobs(tuple(shift.tolist()))
    network = UNet(UNetConfig(encoder=(8, 8), head=(8,)))
    optimiser = torch.optim.Adam(network.parameters(), lr=3e-3)
    for _ in range(120):
        optimiser.zero_grad()
        field = network(fixed, moving)
        loss = (warp_image(moving, field) - fixed).pow(2).mean()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        field = network(fixed, moving)[0]
    inside = fixed[0, 0] > 0.3
    recovered = torch.stack([field[a][inside].mean() for a in range(3)])
    assert (recovered - shift).abs().max() < 0.25, recovered
