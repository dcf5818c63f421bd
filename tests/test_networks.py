import pytest
import torch
from torch.distributions import Normal

from vaelab.errors import ConfigError
from vaelab.networks import VAE, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, activation_layer, reparameterize

SHAPE = (1, 28, 28)


def make_vae(kind: str, latent_dim=4, num_classes=0):
    enc, dec = {"mlp": (MLPEncoder, MLPDecoder), "conv": (ConvEncoder, ConvDecoder)}[kind]
    common = dict(image_shape=SHAPE, latent_dim=latent_dim, cond_dim=num_classes)
    return VAE(enc(**common), dec(**common), latent_dim, num_classes)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_forward_shapes(kind, num_classes):
    vae = make_vae(kind, num_classes=num_classes)
    x, y = torch.rand(5, *SHAPE), torch.arange(5)
    out = vae(x, y)
    assert out.mean.shape == out.logvar.shape == out.z.shape == (5, 4)
    assert out.decoder_output.shape == (5, *SHAPE)


def test_reparameterization_is_differentiable_and_random():
    torch.manual_seed(0)
    vae = make_vae("mlp")
    x = torch.rand(3, *SHAPE)
    a, b = vae(x), vae(x)
    torch.testing.assert_close(a.mean, b.mean)
    assert not torch.allclose(a.z, b.z)
    a.z.sum().backward()
    assert vae.encoder.heads.logvar.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("sample_shape", [(), (7,)])
def test_reparameterize_draws_what_normal_rsample_draws(sample_shape):
    """The same z and the same gradients, bit for bit, as torch's Normal with the same generator state."""
    mean, logvar = torch.randn(5, 3, requires_grad=True), torch.randn(5, 3, requires_grad=True)
    torch.manual_seed(1)
    z, eps = reparameterize(mean, logvar, sample_shape)
    grads = torch.autograd.grad(z.square().sum(), (mean, logvar))
    torch.manual_seed(1)
    z_ref = Normal(mean, torch.exp(0.5 * logvar)).rsample(sample_shape)
    grads_ref = torch.autograd.grad(z_ref.square().sum(), (mean, logvar))
    assert z.shape == (*sample_shape, 5, 3)
    assert torch.equal(z, z_ref)
    assert all(torch.equal(g, r) for g, r in zip(grads, grads_ref, strict=True))
    assert torch.equal(z, mean + eps * torch.exp(0.5 * logvar))
    assert not torch.equal(z, reparameterize(mean, logvar, sample_shape)[0])  # a new draw each call


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_cvae_output_depends_on_label(kind):
    torch.manual_seed(0)
    vae = make_vae(kind, num_classes=10)
    z = torch.randn(1, 4).repeat(10, 1)
    images = vae.decode(z, torch.arange(10))
    assert not torch.allclose(images[0], images[1])
    x = torch.rand(1, *SHAPE).repeat(2, 1, 1, 1)
    mean, _ = vae.encode(x, torch.tensor([3, 7]))
    assert not torch.allclose(mean[0], mean[1])
    with pytest.raises(ValueError, match="labels"):
        vae(x)


def test_unconditional_vae_ignores_labels():
    torch.manual_seed(0)
    vae = make_vae("mlp")
    z = torch.randn(2, 4)
    torch.testing.assert_close(vae.decode(z, torch.tensor([0, 1])), vae.decode(z, torch.tensor([5, 9])))


def test_prior_is_standard_normal():
    prior = make_vae("mlp", latent_dim=3).prior(7)
    assert prior.batch_shape == (7, 3)
    assert torch.equal(prior.mean, torch.zeros(7, 3)) and torch.equal(prior.stddev, torch.ones(7, 3))


def test_unknown_activation_is_named():
    assert isinstance(activation_layer("Tanh"), torch.nn.Tanh)
    with pytest.raises(ValueError, match="Relu"):
        activation_layer("Relu")


@pytest.mark.parametrize(
    ("image_shape", "channels"),
    [((1, 28, 28), (32, 64)), ((3, 32, 32), (32, 64)), ((3, 64, 64), (32, 64, 128)), ((1, 64, 64), (8, 16, 32, 64))],
)
def test_the_conv_net_takes_one_stride_2_layer_per_channel_entry(image_shape, channels):
    encoder = ConvEncoder(image_shape, latent_dim=5, channels=channels, hidden_dim=32)
    decoder = ConvDecoder(image_shape, latent_dim=5, channels=channels, hidden_dim=32)
    mean, logvar = encoder(torch.rand(2, *image_shape))
    assert mean.shape == logvar.shape == (2, 5) and decoder(mean).shape == (2, *image_shape)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in encoder.modules()) == len(channels)
    if len(channels) == 2:  # the parameter names of checkpoints written with two layers stay the same
        assert {"features.0.weight", "features.2.weight"} <= set(encoder.state_dict())
        assert {"deconv.0.weight", "deconv.2.weight"} <= set(decoder.state_dict())


def test_a_size_the_conv_layers_cannot_halve_is_one_line():
    with pytest.raises(ConfigError, match=r"3 stride-2 layers needs image sides divisible by 8, got \(1, 28, 28\)"):
        ConvEncoder((1, 28, 28), latent_dim=4, channels=(8, 16, 32))
