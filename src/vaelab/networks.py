"""Encoders, decoders and the VAE that joins them.

Shapes: images x are (B, C, H, W); the condition c is a one-hot label (B, K) or None;
latents z are (B, D). Encoders return the diagonal Gaussian posterior's mean and
log-variance, each (B, D). Decoders return the likelihood's parameters with the image's
shape (B, C, H, W) (logits for the Bernoulli, pre-sigmoid means for the Gaussian).
The losses live in ``objectives.py``, not here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal

from vaelab.errors import ConfigError


def activation_layer(name: str) -> nn.Module:
    """An activation by its torch.nn class name, e.g. "ReLU", "Tanh", "ELU"."""
    layer = getattr(nn, name, None)
    if not (isinstance(layer, type) and issubclass(layer, nn.Module)):
        raise ConfigError(f"unknown activation {name!r}: use a torch.nn class name such as ReLU, Tanh, ELU")
    return layer()


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers of the given sizes, each followed by the activation."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), activation_layer(activation)]
    return nn.Sequential(*layers)


def with_condition(h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """Concatenate a flat feature (B, F) with the one-hot condition (B, K), if any."""
    return h if c is None else torch.cat([h, c.to(h.dtype)], dim=1)


class GaussianHeads(nn.Module):
    """Features (B, F) -> posterior mean (B, D) and log-variance (B, D)."""

    def __init__(self, in_features: int, latent_dim: int):
        super().__init__()
        self.mean = nn.Linear(in_features, latent_dim)
        self.logvar = nn.Linear(in_features, latent_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean(h), self.logvar(h)


class MLPEncoder(nn.Module):
    """x (B, C, H, W) [+ c (B, K)] -> mean, logvar (B, D) through hidden_dims."""

    def __init__(self, image_shape, latent_dim: int, cond_dim: int = 0, hidden_dims=(400,), activation="ReLU"):
        super().__init__()
        sizes = [math.prod(image_shape) + cond_dim, *hidden_dims]
        self.body = mlp(sizes, activation)
        self.heads = GaussianHeads(sizes[-1], latent_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None):
        return self.heads(self.body(with_condition(x.flatten(1), c)))


class MLPDecoder(nn.Module):
    """z (B, D) [+ c (B, K)] -> likelihood parameters (B, C, H, W) through hidden_dims."""

    def __init__(self, image_shape, latent_dim: int, cond_dim: int = 0, hidden_dims=(400,), activation="ReLU"):
        super().__init__()
        self.image_shape = tuple(image_shape)
        sizes = [latent_dim + cond_dim, *hidden_dims]
        self.body = mlp(sizes, activation)
        self.out = nn.Linear(sizes[-1], math.prod(image_shape))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(self.body(with_condition(z, c))).view(-1, *self.image_shape)


class ConvEncoder(nn.Module):
    """x (B, C, H, W) -> one stride-2 convolution per entry of ``channels`` (32, 64: 28x28 -> 7x7)
    -> [+ c] -> MLP -> mean, logvar (B, D). H and W must divide by 2 ** len(channels); larger
    images take more entries (64x64 with 32, 64, 128 -> 8x8)."""

    def __init__(
        self, image_shape, latent_dim: int, cond_dim: int = 0, channels=(32, 64), hidden_dim=256, activation="ReLU"
    ):
        super().__init__()
        in_channels, height, width = image_shape
        factor = conv_factor(image_shape, channels, "ConvEncoder")
        layers = []
        for n_in, n_out in zip([in_channels, *channels[:-1]], channels, strict=True):
            layers += [nn.Conv2d(n_in, n_out, 4, stride=2, padding=1), activation_layer(activation)]
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.body = mlp([channels[-1] * (height // factor) * (width // factor) + cond_dim, hidden_dim], activation)
        self.heads = GaussianHeads(hidden_dim, latent_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None):
        return self.heads(self.body(with_condition(self.features(x), c)))


def conv_factor(image_shape, channels, name: str) -> int:
    """2 ** len(channels), the factor the stride-2 layers shrink the image by; a ConfigError
    naming the sizes when the image's sides do not divide by it."""
    if len(channels) < 1:
        raise ConfigError(f"{name} needs at least one entry in channels, got {list(channels)}")
    factor = 2 ** len(channels)
    if image_shape[1] % factor or image_shape[2] % factor:
        raise ConfigError(
            f"{name} with {len(channels)} stride-2 layers needs image sides divisible by {factor}, "
            f"got {tuple(image_shape)}: set data.image_size, or give channels fewer entries"
        )
    return factor


class ConvDecoder(nn.Module):
    """z (B, D) [+ c] -> MLP -> (channels[-1], H / 2**L, W / 2**L) -> one stride-2 transposed
    convolution per entry of ``channels``, in reverse -> (B, C, H, W)."""

    def __init__(
        self, image_shape, latent_dim: int, cond_dim: int = 0, channels=(32, 64), hidden_dim=256, activation="ReLU"
    ):
        super().__init__()
        out_channels, height, width = image_shape
        factor = conv_factor(image_shape, channels, "ConvDecoder")
        self.grid = (channels[-1], height // factor, width // factor)
        self.body = mlp([latent_dim + cond_dim, hidden_dim, math.prod(self.grid)], activation)
        layers = []
        for n_in, n_out in zip(channels[::-1], [*channels[::-1][1:]], strict=False):
            layers += [nn.ConvTranspose2d(n_in, n_out, 4, stride=2, padding=1), activation_layer(activation)]
        self.deconv = nn.Sequential(*layers, nn.ConvTranspose2d(channels[0], out_channels, 4, stride=2, padding=1))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.deconv(self.body(with_condition(z, c)).view(-1, *self.grid))


class MaskedConv2d(nn.Conv2d):
    """A PixelCNN convolution (van den Oord et al. 2016) over one-channel images, raster order.

    Output pixel (r, c) sees the input pixels above row r and, in row r, those left of column c;
    mask "A" excludes (r, c) itself (the first layer), mask "B" includes it (later layers, whose
    input at (r, c) already depends only on earlier pixels). Shapes: (N, C_in, H, W) -> (N, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask: str):
        if mask not in ("A", "B") or kernel_size % 2 == 0:
            raise ConfigError(f"MaskedConv2d needs mask 'A' or 'B' and an odd kernel size, got {mask!r}, {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        centre = kernel_size // 2
        weight_mask = torch.ones_like(self.weight)
        weight_mask[:, :, centre, centre + (mask == "B") :] = 0
        weight_mask[:, :, centre + 1 :] = 0
        self.register_buffer("weight_mask", weight_mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.weight_mask, self.bias, padding=self.padding)


def reparameterize(
    mean: torch.Tensor, logvar: torch.Tensor, sample_shape: tuple[int, ...] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, eps), both (*sample_shape, B, D): z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) from
    the global generator (log q(z | x) needs only eps).

    z and its gradients are the same, bit for bit, as ``Normal(mean, exp(logvar / 2)).rsample(sample_shape)``
    (tests/test_networks.py), without building the distribution and broadcasting its arguments
    on every training step."""
    eps = torch.empty((*sample_shape, *mean.shape), dtype=mean.dtype, device=mean.device).normal_()
    return mean + eps * torch.exp(0.5 * logvar), eps


@dataclass
class VAEOutput:
    """One forward pass: posterior mean/logvar (B, D), z (B, D) and decoder output (B, C, H, W),
    or with k samples per image z (k, B, D) and decoder output (k, B, C, H, W)."""

    mean: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor
    decoder_output: torch.Tensor


class VAE(nn.Module):
    """q(z | x[, y]) = N(mean, diag(exp(logvar))), prior p(z) = N(0, I), decoder p(x | z[, y]).

    With ``num_classes > 0`` it is a conditional VAE: the one-hot label goes into both
    the encoder and the decoder.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, num_classes: int = 0):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = latent_dim
        self.num_classes = num_classes

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def condition(self, y: torch.Tensor | None) -> torch.Tensor | None:
        """Labels (B,) -> one-hot (B, K) for a CVAE, None for an unconditional VAE."""
        if not self.conditional:
            return None
        if y is None:
            raise ValueError("a conditional VAE needs labels y")
        return F.one_hot(y, self.num_classes).float()

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x, self.condition(y))

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(z, self.condition(y))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, samples: int = 1) -> VAEOutput:
        """One encoder pass, then ``samples`` reparameterized draws of z through the decoder.

        samples = 1: z (B, D), decoder_output (B, C, H, W). samples = k > 1: z (k, B, D) and decoder_output
        (k, B, C, H, W), the k * B codes decoded as one batch (for the IWAE bound)."""
        c = self.condition(y)
        mean, logvar = self.encoder(x, c)
        if samples == 1:
            z, _ = reparameterize(mean, logvar)
            return VAEOutput(mean, logvar, z, self.decoder(z, c))
        z, _ = reparameterize(mean, logvar, (samples,))
        labels = None if c is None else c.repeat(samples, 1)
        decoder_output = self.decoder(z.flatten(0, 1), labels)
        return VAEOutput(mean, logvar, z, decoder_output.unflatten(0, (samples, len(x))))

    def prior(self, n: int, device=None) -> Normal:
        """p(z) = N(0, I) with batch shape (n, D)."""
        zeros = torch.zeros(n, self.latent_dim, device=device)
        return Normal(zeros, torch.ones_like(zeros), validate_args=False)
