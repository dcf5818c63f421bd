"""The closed-form KL, the one Objective (β, annealing, free bits, capacity, IWAE, DReG) and the
importance-sampled log-likelihood against an exact one."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from vaelab.annealing import Linear
from vaelab.likelihoods import BernoulliLikelihood
from vaelab.objectives import (
    Objective,
    importance_weighted_terms,
    iwae_bound,
    kl_standard_normal,
)


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mean, logvar = torch.randn(16, 5) * 2, torch.randn(16, 5)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(torch.zeros(5), torch.ones(5)))
    torch.testing.assert_close(kl_standard_normal(mean, logvar), expected)


def test_kl_is_zero_only_at_the_prior():
    zeros = torch.zeros(3, 4)
    assert torch.equal(kl_standard_normal(zeros, zeros), zeros)
    assert (kl_standard_normal(zeros + 0.1, zeros) > 0).all()


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(8, 1, 28, 28, generator=g).round()
    return x, torch.randn(8, 1, 28, 28, generator=g), torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)


def test_elbo_terms_are_per_image_sums_averaged_over_the_batch():
    x, decoder_output, mean, logvar = batch()
    terms = Objective(BernoulliLikelihood(), beta=4.0)(x, decoder_output, mean, logvar, step=0)
    recon = F.binary_cross_entropy_with_logits(decoder_output, x, reduction="sum") / 8
    kl = kl_standard_normal(mean, logvar).sum() / 8
    torch.testing.assert_close(terms["recon"], recon)
    torch.testing.assert_close(terms["kl"], kl)
    torch.testing.assert_close(terms["elbo"], -(recon + kl))  # the plain ELBO ignores beta
    torch.testing.assert_close(terms["loss"], recon + 4.0 * kl)
    assert terms["beta"] == 4.0


def test_annealing_scales_the_kl_weight_by_global_step():
    x, decoder_output, mean, logvar = batch()
    objective = Objective(BernoulliLikelihood(), beta=2.0, schedule=Linear(warmup_steps=100))
    at_0, at_50 = (
        objective(x, decoder_output, mean, logvar, step=0),
        objective(x, decoder_output, mean, logvar, step=50),
    )
    assert at_0["beta"] == 0.0 and at_50["beta"] == 1.0
    torch.testing.assert_close(at_0["loss"], at_0["recon"])
    torch.testing.assert_close(at_50["loss"], at_50["recon"] + at_50["kl"])


def test_free_bits_hold_each_dimension_at_least_lambda():
    x, decoder_output, _, _ = batch()
    mean, logvar = torch.zeros(8, 6), torch.zeros(8, 6)
    mean[:, 0] = 3.0  # dimension 0 carries 4.5 nats, the rest none
    terms = Objective(BernoulliLikelihood(), free_bits=0.5)(x, decoder_output, mean, logvar, step=0)
    torch.testing.assert_close(terms["kl"], torch.tensor(4.5))
    torch.testing.assert_close(terms["loss"] - terms["recon"], torch.tensor(4.5 + 5 * 0.5))


def test_capacity_control_penalises_distance_to_the_ramped_target():
    x, decoder_output, mean, logvar = batch()
    capacity = {"gamma": 10.0, "max_nats": 20.0, "ramp_steps": 100}
    objective = Objective(BernoulliLikelihood(), capacity=capacity)
    terms = objective(x, decoder_output, mean, logvar, step=25)
    assert terms["capacity"] == 5.0
    torch.testing.assert_close(terms["loss"], terms["recon"] + 10.0 * (terms["kl"] - 5.0).abs())
    assert objective(x, decoder_output, mean, logvar, step=10_000)["capacity"] == 20.0


def iwae_inputs(k=5, seed=0):
    """x (8, 1, 28, 28), decoder logits (k, 8, 1, 28, 28), codes z (k, 8, 6) and the posterior (8, 6)."""
    g = torch.Generator().manual_seed(seed)
    x, _, mean, logvar = batch(seed)
    z = mean + (0.5 * logvar).exp() * torch.randn(k, 8, 6, generator=g)
    return x, torch.randn(k, 8, 1, 28, 28, generator=g), z, mean, logvar


def test_iwae_loss_is_minus_the_importance_weighted_bound():
    x, decoder_output, z, mean, logvar = iwae_inputs(k=5)
    terms = Objective(BernoulliLikelihood(), importance_samples=5)(x, decoder_output, mean, logvar, step=0, z=z)
    log_px_z = -F.binary_cross_entropy_with_logits(decoder_output, x.expand_as(decoder_output), reduction="none").sum(
        (2, 3, 4)
    )
    log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_qz = Normal(mean, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    bound = torch.logsumexp(log_px_z + log_pz - log_qz, 0) - math.log(5)  # (8,)
    torch.testing.assert_close(terms["loss"], -bound.mean())
    torch.testing.assert_close(terms["iwae"], bound.mean())
    torch.testing.assert_close(terms["recon"], -log_px_z.mean())  # the mean over all k samples
    torch.testing.assert_close(terms["kl"], kl_standard_normal(mean, logvar).sum() / 8)
    torch.testing.assert_close(terms["elbo"], -(terms["recon"] + terms["kl"]))


def test_iwae_bound_is_at_least_the_mean_log_weight_and_anneals_the_prior_ratio():
    x, decoder_output, z, mean, logvar = iwae_inputs(k=5)
    objective = Objective(BernoulliLikelihood(), importance_samples=5, schedule=Linear(warmup_steps=100))
    at_0, at_100 = (
        objective(x, decoder_output, mean, logvar, step=0, z=z),
        objective(x, decoder_output, mean, logvar, step=100, z=z),
    )
    log_px_z = BernoulliLikelihood().log_prob(x, decoder_output)  # (5, 8)
    # beta_t = 0: the weights are p(x | z_i) alone
    torch.testing.assert_close(at_0["loss"], -(torch.logsumexp(log_px_z, 0) - math.log(5)).mean())
    assert at_0["beta"] == 0.0 and at_100["beta"] == 1.0
    torch.testing.assert_close(at_0["iwae"], at_100["iwae"])  # the logged bound is always at beta = 1
    torch.testing.assert_close(at_100["iwae"], -at_100["loss"])
    # Jensen: log-mean-exp of the weights >= their mean (the ELBO's Monte-Carlo estimate on the same samples)
    log_w = log_px_z + Normal(0.0, 1.0).log_prob(z).sum(-1) - Normal(mean, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    assert at_100["iwae"] >= log_w.mean()


def dreg_setup(k, copies, dtype=torch.float64):
    """A linear-Gaussian decoder p(x | z) = N(W z, 0.5^2 I) and a posterior off the exact one, on
    ``copies`` copies of one x: each row's gradient is an independent estimate of the same gradient."""
    g = torch.Generator().manual_seed(3)
    W = torch.randn(4, 2, generator=g, dtype=dtype)
    x = torch.randn(1, 4, generator=g, dtype=dtype).expand(copies, 4)
    mean = torch.full((copies, 2), 0.3, dtype=dtype, requires_grad=True)
    logvar = torch.full((copies, 2), -1.0, dtype=dtype, requires_grad=True)
    eps = torch.randn(k, copies, 2, generator=g, dtype=dtype)
    return W, x, mean, logvar, eps


class GaussianOfMean(nn.Module):
    """p(x | z) = N(decoder_output, 0.5^2 I) over the last dimension."""

    def log_prob(self, x, decoder_output):
        return Normal(decoder_output, 0.5).log_prob(x).sum(-1)


def encoder_gradients(dreg, k=8, copies=4000):
    """Per-copy gradients of the loss (times the batch size) with respect to mean and logvar: (copies, 4)."""
    W, x, mean, logvar, eps = dreg_setup(k, copies)
    z = mean + (0.5 * logvar).exp() * eps
    objective = Objective(GaussianOfMean(), importance_samples=k, dreg=dreg)
    decoder_output = (z @ W.T).float()
    terms = objective(x.float(), decoder_output, mean.float(), logvar.float(), step=0, z=z)
    mean_grad, logvar_grad = torch.autograd.grad(terms["loss"] * copies, (mean, logvar))
    return torch.cat([mean_grad, logvar_grad], dim=1).double()


def test_dreg_matches_its_surrogate_and_leaves_the_decoder_gradient_alone():
    """DReG's encoder gradient is -sum_i w~_i^2 d log w_i / dz_i dz_i/dphi with q's parameters held
    fixed in log w_i (Tucker et al. 2019); the decoder's is the IWAE gradient -sum_i w~_i d log w_i / dtheta."""
    k, copies = 5, 3
    W, x, mean, logvar, eps = dreg_setup(k, copies)
    W = W.clone().requires_grad_(True)
    z = mean + (0.5 * logvar).exp() * eps
    log_w = (
        GaussianOfMean().log_prob(x, z @ W.T)
        + Normal(0.0, 1.0).log_prob(z).sum(-1)
        - Normal(mean.detach(), (0.5 * logvar).exp().detach()).log_prob(z).sum(-1)
    )
    weights = torch.softmax(log_w.detach(), 0)
    surrogate_encoder = -(weights.square() * log_w).sum(0).mean()
    expected_enc = torch.autograd.grad(surrogate_encoder, (mean, logvar), retain_graph=True)
    expected_dec = torch.autograd.grad(-(weights * log_w).sum(0).mean(), W)[0]

    z = mean + (0.5 * logvar).exp() * eps
    terms = Objective(GaussianOfMean(), importance_samples=k, dreg=True)(x, z @ W.T, mean, logvar, step=0, z=z)
    *got_enc, got_dec = torch.autograd.grad(terms["loss"], (mean, logvar, W))
    for got, expected in zip([*got_enc, got_dec], [*expected_enc, expected_dec], strict=True):
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)


def test_dreg_is_unbiased_with_less_variance_than_the_iwae_encoder_gradient():
    iwae, dreg = encoder_gradients(dreg=False), encoder_gradients(dreg=True)
    standard_error = (iwae.var(0) / len(iwae) + dreg.var(0) / len(dreg)).sqrt()
    assert ((iwae.mean(0) - dreg.mean(0)).abs() < 4 * standard_error).all()  # the same expected gradient
    assert (dreg.var(0) < 0.5 * iwae.var(0)).all()  # and a much less noisy one


# The importance-sampled log-likelihood (importance_weighted_terms, iwae_bound) on a linear-Gaussian
# model, where log p(x) is exact:
# p(z) = N(0, I), p(x | z) = N(W z + b, s^2 I)  =>  p(x) = N(b, W W^T + s^2 I). With orthogonal
# columns in W, the exact posterior is diagonal, so the model fits vaelab's Gaussian encoder.
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
