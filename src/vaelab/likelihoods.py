"""Likelihoods p(x | z): the decoder's output turned into nats per image, and samples.

Each module is named by ``_target_`` in ``configs/likelihood/`` and takes
``log_prob(x, decoder_output)`` -> (B,) nats per image (a sum over pixels) and ``sample``.

- ``BernoulliLikelihood``: binary pixels, logits from the decoder.
- ``GaussianLikelihood``: N(sigmoid(output), sigma^2), sigma fixed or learned; a density on grey
  levels, whose nats are not comparable with a discrete likelihood's.
- ``DiscretizedLogistic``: 8-bit pixels, each value's mass under a logistic (PixelCNN++ with one
  component): a true log-likelihood of grey or colour images, in bits per dimension too.
- ``LocalAutoregressiveBernoulli``: Bernoulli with masked convolutions over the pixels above and
  to the left (PixelVAE-style), still a normalized discrete likelihood.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

from vaelab.errors import ConfigError
from vaelab.networks import MaskedConv2d

LOG_2PI = math.log(2 * math.pi)


def bernoulli_log_prob(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """sum over the image of log Bernoulli(x | sigmoid(logits)): x (B, C, H, W), logits (..., B, C, H, W)
    -> (..., B) nats. x broadcasts over the leading (importance-sample) dimensions without a copy."""
    event_dims = tuple(range(-(x.dim() - 1), 0))
    return F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(event_dims).neg()


class BernoulliLikelihood(nn.Module):
    """p(x | z) = prod_pixels Bernoulli(sigmoid(decoder_output)): binary cross-entropy with logits, summed per image."""

    def distribution(self, decoder_output: torch.Tensor, event_dims: int = 3) -> Independent:
        """One distribution per image: the last event_dims (C, H, W) dimensions are one event."""
        return Independent(Bernoulli(logits=decoder_output, validate_args=False), event_dims)

    def log_prob(self, x: torch.Tensor, decoder_output: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), decoder_output (..., B, C, H, W) -> log p(x | z) (..., B) in nats (x broadcasts, no copies).

        Equal to ``self.distribution(decoder_output).log_prob(x)``, computed as torch's fused binary
        cross-entropy with logits, which skips the distribution object's broadcasting and negation
        (timings: docs/benchmarks.md)."""
        return bernoulli_log_prob(x, decoder_output)

    def image(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """Pixel means (B, C, H, W) in [0, 1], for pictures."""
        return torch.sigmoid(decoder_output)


class GaussianLikelihood(nn.Module):
    """p(x | z) = prod_pixels N(sigmoid(decoder_output), sigma^2), summed per image.

    With a fixed sigma this is a scaled MSE plus a constant; with ``learn_sigma`` one shared
    log-sigma is trained. Note: on grey-level pixels this is a density, so its nats are not
    comparable with discrete (Bernoulli) log-likelihoods.
    """

    def __init__(self, sigma: float = 0.1, learn_sigma: bool = False):
        super().__init__()
        if sigma <= 0:
            raise ConfigError(f"likelihood.sigma must be > 0, got {sigma}")
        log_sigma = torch.tensor(float(sigma)).log()
        if learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    def distribution(self, decoder_output: torch.Tensor, event_dims: int = 3) -> Independent:
        """One distribution per image: the last event_dims (C, H, W) dimensions are one event."""
        scale = self.log_sigma.exp().expand_as(decoder_output)
        return Independent(Normal(torch.sigmoid(decoder_output), scale, validate_args=False), event_dims)

    def log_prob(self, x: torch.Tensor, decoder_output: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), decoder_output (..., B, C, H, W) -> log p(x | z) (..., B) in nats
        (x broadcasts, no copies)."""
        return self.distribution(decoder_output, x.dim() - 1).log_prob(x)

    def image(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """Pixel means (B, C, H, W) in [0, 1], for pictures."""
        return torch.sigmoid(decoder_output)


class DiscretizedLogistic(nn.Module):
    """p(x | z) for 8-bit pixels: the value k / 255 gets the mass that a logistic of mean
    sigmoid(decoder_output) and scale s puts on [(k - 0.5) / 255, (k + 0.5) / 255], the two end
    values taking the tails, as in PixelCNN++ (Salimans et al. 2017) with one component. One
    log-scale per channel is learned. The masses of the 256 values sum to 1, so the NLL is a true
    log-likelihood of the 8-bit image: bits per dimension are its nats / (C H W ln 2).
    """

    takes_image_shape = True  # VAELitModule passes the data's (C, H, W)

    def __init__(self, image_shape=(1, 28, 28), log_scale: float = -3.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.full((int(image_shape[0]), 1, 1), float(log_scale)))

    def log_prob(self, x: torch.Tensor, decoder_output: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) with values k / 255, decoder_output (..., B, C, H, W) -> log p(x | z)
        (..., B) in nats (x broadcasts over the leading dimensions)."""
        log_scale = self.log_scale.clamp(min=-9.0)
        inverse_scale = torch.exp(-log_scale)
        centered = x - torch.sigmoid(decoder_output)
        upper = inverse_scale * (centered + 0.5 / 255)  # logistic CDF arguments at the bin's two edges
        lower = inverse_scale * (centered - 0.5 / 255)
        log_cdf_upper = -F.softplus(-upper)  # log sigmoid: the mass below the edge (value 0)
        log_survival_lower = -F.softplus(lower)  # log (1 - sigmoid): the mass above it (value 255)
        mass = torch.sigmoid(upper) - torch.sigmoid(lower)
        # where the difference of two CDFs underflows, the density at the bin's middle times its width
        middle = inverse_scale * centered
        log_density = middle - log_scale - 2 * F.softplus(middle) - math.log(255)
        log_middle = torch.where(mass > 1e-5, mass.clamp_min(1e-12).log(), log_density)
        log_p = torch.where(x < 0.5 / 255, log_cdf_upper, torch.where(x > 254.5 / 255, log_survival_lower, log_middle))
        return log_p.sum(dim=(-3, -2, -1))

    def image(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """Pixel means (B, C, H, W) in [0, 1], for pictures."""
        return torch.sigmoid(decoder_output)


class LocalAutoregressiveBernoulli(nn.Module):
    """p(x | z) = prod_i Bernoulli(x_i | sigmoid(a_i + f_i(x_<i, a))), pixels i in raster order.

    A PixelCNN-style decoder head with a small receptive field, as in PixelVAE (Gulrajani et al.
    2017) and the variational lossy autoencoder (Chen et al. 2017): the decoder's output a(z)
    (B, 1, H, W) are base logits; two masked convolutions (kernel_size, then 3) read the pixels
    above and to the left, once per image, and one 3x3 convolution of a(z) joins them before a
    1x1 head. The context reaches only ``rows_above`` rows up, so the digit's global shape must
    come from z, while the strokes' local detail, which a factorized Bernoulli cannot express,
    comes from the neighbours. Still a normalized discrete likelihood: its nats compare with
    the plain Bernoulli's.
    """

    def __init__(self, channels: int = 16, kernel_size: int = 7):
        super().__init__()
        if channels < 1:
            raise ConfigError(f"likelihood.channels must be >= 1, got {channels}")
        self.context_net = nn.Sequential(
            MaskedConv2d(1, channels, kernel_size, "A"), nn.ReLU(), MaskedConv2d(channels, channels, 3, "B")
        )
        self.from_base = nn.Conv2d(1, channels, 3, padding=1)
        self.head = nn.Conv2d(channels, 1, 1)
        self.rows_above = kernel_size // 2 + 1

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 1, H, W) -> features (B, channels, H, W) of the pixels before each pixel."""
        if x.shape[-3] != 1:
            raise ConfigError(f"likelihood=ar_bernoulli takes one-channel images, got {x.shape[-3]} channels")
        return self.context_net(x)

    def logits(self, context: torch.Tensor, decoder_output: torch.Tensor, block: int = 256) -> torch.Tensor:
        """context (B, channels, H, W), decoder_output (..., B, 1, H, W) -> logits (..., B, 1, H, W).

        Many samples (importance sampling) go through in blocks of about ``block`` images, so
        that the (block, channels, H, W) hidden maps stay in the CPU's cache: 2.7 times faster
        than one pass over 20,000 samples, and the same numbers."""
        batch, shape = context.shape[0], decoder_output.shape
        base = decoder_output.reshape(-1, *shape[-3:])
        step = max(batch, block // batch * batch)  # whole copies of the batch, aligned with the context
        context = context.repeat(min(step, len(base)) // batch, 1, 1, 1)
        blocks = [part + self.head(F.relu(self.from_base(part) + context[: len(part)])) for part in base.split(step)]
        return torch.cat(blocks).view(shape)

    def log_prob(self, x: torch.Tensor, decoder_output: torch.Tensor) -> torch.Tensor:
        """x (B, 1, H, W), decoder_output (..., B, 1, H, W) -> log p(x | z) (..., B) in nats; the context
        of x is computed once and shared by the leading (importance-sample) dimensions."""
        return bernoulli_log_prob(x, self.logits(self.context(x), decoder_output))

    @torch.no_grad()
    def image(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """For pictures: one image per z, drawn pixel by pixel in raster order, shown as the
        probabilities sigmoid(logit_i) with which each pixel was drawn: (B, 1, H, W) in [0, 1].
        Each pixel's context is computed on the strip of rows it can see."""
        x, probs = torch.zeros_like(decoder_output), torch.zeros_like(decoder_output)
        from_base = self.from_base(decoder_output)  # (B, channels, H, W): does not depend on x
        height, width = decoder_output.shape[-2:]
        for row in range(height):
            top = max(0, row - self.rows_above)
            for col in range(width):
                context = self.context(x[..., top : row + 1, :])[..., -1, :]  # (B, channels, W)
                hidden = F.relu(from_base[..., row, :] + context)
                logit = decoder_output[..., 0, row, col] + self.head(hidden.unsqueeze(-2))[..., 0, 0, col]
                probs[..., 0, row, col] = torch.sigmoid(logit)
                x[..., 0, row, col] = torch.bernoulli(probs[..., 0, row, col])
        return probs
