"""The importance-sampled log-likelihood on a linear-Gaussian model, where log p(x) is exact.

p(z) = N(0, I), p(x | z) = N(W z + b, s^2 I)  =>  p(x) = N(b, W W^T + s^2 I). With orthogonal
columns in W, the exact posterior is diagonal, so the model fits vaelab's Gaussian encoder.
"""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal

from vaelab.objectives import importance_weighted_terms, iwae_bound, kl_standard_normal

P, D, SIGMA = 6, 2, 0.5


class IdentityGaussian(nn.Module):
    """p(x | z) = N(decoder_output, s^2 I) summed over the P coordinates."""

    def log_prob(self, x, decoder_output):
        return Independent(Normal(decoder_output, SIGMA), 1).log_prob(x)


class LinearGaussianVAE(nn.Module):
    conditional = False

    def __init__(self, mean_shift=0.0, var_scale=1.0):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(P, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
        self.W, self.b = (
            q * torch.tensor([2.0, 0.7], dtype=torch.float64),
            torch.linspace(-1, 1, P, dtype=torch.float64),
        )
        precision = 1 + (self.W * self.W).sum(0) / SIGMA**2  # diagonal of I + W^T W / s^2
        self.post_var = 1 / precision
        self.mean_shift, self.var_scale = mean_shift, var_scale

    def encode(self, x, y=None):
        mean = (x - self.b) @ self.W / SIGMA**2 * self.post_var + self.mean_shift
        return mean, (self.post_var * self.var_scale).log().expand_as(mean)

    def decode(self, z, y=None):
        return z @ self.W.T + self.b

    def log_px(self, x):
        return MultivariateNormal(self.b, self.W @ self.W.T + SIGMA**2 * torch.eye(P, dtype=torch.float64)).log_prob(x)

    def elbo(self, x):
        """The exact ELBO of the (possibly perturbed) diagonal posterior."""
        mean, logvar = self.encode(x)
        residual = x - self.decode(mean)
        expected_sq = residual.square().sum(-1) + (self.W.square() * logvar.exp()[:, None, :]).sum((-1, -2))
        recon = -0.5 * P * math.log(2 * math.pi * SIGMA**2) - expected_sq / (2 * SIGMA**2)
        return recon - kl_standard_normal(mean, logvar).sum(-1)


def data(vae, n=5):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(n, D, generator=g, dtype=torch.float64)
    return vae.decode(z) + SIGMA * torch.randn(n, P, generator=g, dtype=torch.float64)


def test_exact_posterior_gives_exact_log_likelihood_for_every_sample():
    torch.manual_seed(0)
    vae = LinearGaussianVAE()
    x = data(vae)
    log_w = importance_weighted_terms(vae, IdentityGaussian(), x, None, k=7)[0]
    assert log_w.shape == (5, 7)
    torch.testing.assert_close(log_w, vae.log_px(x)[:, None].expand(5, 7))
    torch.testing.assert_close(iwae_bound(log_w), vae.log_px(x))


def test_estimate_converges_to_log_px_as_k_grows():
    torch.manual_seed(0)
    vae = LinearGaussianVAE(mean_shift=0.4, var_scale=2.5)
    x = data(vae)
    exact = vae.log_px(x)
    errors = {}
    for k in (1, 10, 100, 5000):
        estimates = torch.stack(
            [iwae_bound(importance_weighted_terms(vae, IdentityGaussian(), x, None, k)[0]) for _ in range(20)]
        )
        errors[k] = (estimates.mean(0) - exact).abs().max().item()
    assert errors[5000] < 0.01
    assert errors[1] > errors[10] > errors[100] > errors[5000]


def test_bound_does_not_get_worse_as_k_grows():
    torch.manual_seed(0)
    vae = LinearGaussianVAE(mean_shift=0.4, var_scale=2.5)
    x = data(vae)
    means = [
        torch.stack(
            [iwae_bound(importance_weighted_terms(vae, IdentityGaussian(), x, None, k)[0]) for _ in range(200)]
        ).mean()
        for k in (1, 4, 16, 64, 256)
    ]
    assert means == sorted(means)
    assert means[-1] <= vae.log_px(x).mean() + 1e-3  # still a lower bound in expectation


def test_k_equal_one_is_an_unbiased_elbo_estimate():
    torch.manual_seed(0)
    vae = LinearGaussianVAE(mean_shift=0.4, var_scale=2.5)
    x = data(vae, n=3)
    draws = iwae_bound(importance_weighted_terms(vae, IdentityGaussian(), x.repeat(20_000, 1), None, k=1)[0]).view(
        20_000, 3
    )
    standard_error = draws.std(0) / math.sqrt(20_000)
    assert ((draws.mean(0) - vae.elbo(x)).abs() < 4 * standard_error).all()
    assert (vae.elbo(x) < vae.log_px(x)).all()


def test_iwae_bound_is_float64_logsumexp():
    log_w = torch.tensor([[-1000.0, -1000.0, -1001.0]])
    bound = iwae_bound(log_w)
    assert bound.dtype == torch.float64
    assert bound.item() == pytest.approx(-1000 + math.log((2 + math.exp(-1)) / 3))
