"""The likelihoods p(x | z): nats per image against torch.distributions, normalization, sampling."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from vaelab.likelihoods import (
    BernoulliLikelihood,
    GaussianLikelihood,
    LocalAutoregressiveBernoulli,
)
from vaelab.networks import MaskedConv2d


def test_bernoulli_log_prob_is_minus_bce_summed_per_image():
    torch.manual_seed(0)
    x, logits = torch.rand(4, 1, 28, 28).round(), torch.randn(4, 1, 28, 28)
    expected = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=(1, 2, 3))
    log_prob = BernoulliLikelihood().log_prob(x, logits)
    assert log_prob.shape == (4,)
    torch.testing.assert_close(log_prob, expected)


def test_bernoulli_log_prob_equals_the_torch_distribution_and_broadcasts_over_samples():
    torch.manual_seed(0)
    likelihood = BernoulliLikelihood()
    x, logits = torch.rand(5, 1, 28, 28).round(), torch.randn(3, 5, 1, 28, 28, requires_grad=True)
    log_prob = likelihood.log_prob(x, logits)
    expected = likelihood.distribution(logits, event_dims=3).log_prob(x)
    assert log_prob.shape == (3, 5)
    torch.testing.assert_close(log_prob, expected)
    (grad,) = torch.autograd.grad(log_prob.sum(), logits)
    torch.testing.assert_close(grad, x - torch.sigmoid(logits.detach()))  # d/dlogit log Bernoulli = x - p


def test_gaussian_log_prob_is_scaled_mse_plus_constant():
    torch.manual_seed(0)
    sigma, x, decoder_output = 0.3, torch.rand(3, 1, 28, 28), torch.randn(3, 1, 28, 28)
    squared_error = (x - torch.sigmoid(decoder_output)).square().sum(dim=(1, 2, 3))
    constant = 784 * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(
        GaussianLikelihood(sigma).log_prob(x, decoder_output), -squared_error / (2 * sigma**2) - constant
    )


def test_gaussian_learned_sigma_is_a_parameter_and_gets_gradients():
    likelihood = GaussianLikelihood(0.5, learn_sigma=True)
    assert [name for name, _ in likelihood.named_parameters()] == ["log_sigma"]
    likelihood.log_prob(torch.rand(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)).sum().backward()
    assert likelihood.log_sigma.grad is not None and likelihood.log_sigma.grad != 0
    assert list(GaussianLikelihood(0.5).parameters()) == []


def test_masked_convolution_sees_only_earlier_pixels():
    torch.manual_seed(0)
    for mask in ("A", "B"):
        conv = MaskedConv2d(1, 4, 5, mask)
        x = torch.randn(1, 1, 6, 6, requires_grad=True)
        conv(x)[0, :, 3, 2].sum().backward()  # output pixel (3, 2)
        seen = x.grad[0, 0] != 0
        rows, cols = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
        earlier = (rows < 3) | ((rows == 3) & (cols < 2))
        allowed = earlier | ((rows == 3) & (cols == 2)) if mask == "B" else earlier
        assert not (seen & ~allowed).any()  # nothing at or after the pixel (A), after it (B)
        assert seen[3, 1] and seen[1, 2] and seen[3, 2] == (mask == "B")


def test_autoregressive_bernoulli_sums_to_one_over_every_binary_image():
    torch.manual_seed(0)
    likelihood = LocalAutoregressiveBernoulli(channels=3, kernel_size=3)
    every = torch.tensor(list(itertools.product([0.0, 1.0], repeat=9))).view(512, 1, 3, 3)
    decoder_output = torch.randn(1, 1, 3, 3).expand(512, 1, 3, 3)  # one z
    with torch.no_grad():
        total = likelihood.log_prob(every, decoder_output).double().exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64), atol=1e-5, rtol=0)


def test_autoregressive_bernoulli_shares_the_context_across_samples():
    torch.manual_seed(0)
    likelihood = LocalAutoregressiveBernoulli(channels=4)
    x, decoder_output = torch.rand(3, 1, 28, 28).round(), torch.randn(5, 3, 1, 28, 28)  # 5 samples of z per image
    with torch.no_grad():
        broadcast = likelihood.log_prob(x, decoder_output)
        one_by_one = torch.stack([likelihood.log_prob(x, p) for p in decoder_output])
    assert broadcast.shape == (5, 3)
    torch.testing.assert_close(broadcast, one_by_one)
    context = likelihood.context(x)  # blocks of 6 samples (two copies of the batch) give the same logits
    with torch.no_grad():
        torch.testing.assert_close(
            likelihood.logits(context, decoder_output, block=6), likelihood.logits(context, decoder_output, block=10**6)
        )


def test_autoregressive_pictures_are_the_probabilities_of_a_sequential_sample():
    torch.manual_seed(0)
    likelihood = LocalAutoregressiveBernoulli(channels=4)
    decoder_output = torch.randn(2, 1, 12, 10)
    torch.manual_seed(1)
    probs = likelihood.image(decoder_output)
    torch.manual_seed(1)  # the same draws again, to recover the sampled image
    sample = torch.zeros_like(decoder_output)
    for row in range(12):
        for col in range(10):
            sample[..., row, col] = torch.bernoulli(probs[..., row, col])
    with torch.no_grad():  # the strip-by-strip probabilities equal the whole-image ones for that image
        whole = torch.sigmoid(likelihood.logits(likelihood.context(sample), decoder_output))
    torch.testing.assert_close(probs, whole)
    assert probs.min() >= 0 and probs.max() <= 1


def test_the_discretized_logistic_puts_mass_one_on_the_256_values_of_a_pixel():
    from vaelab.likelihoods import DiscretizedLogistic

    likelihood = DiscretizedLogistic(image_shape=(1, 1, 1))
    values = torch.arange(256, dtype=torch.float32).div(255).view(256, 1, 1, 1)
    for log_scale in (-9.0, -5.0, -3.0, 0.0, 2.0):  # from a spike on one value to nearly flat
        likelihood.log_scale.data.fill_(log_scale)
        for logit in (-8.0, -1.3, 0.0, 0.7, 6.0):  # means near 0, in between and near 1
            log_p = likelihood.log_prob(values, torch.full((256, 1, 1, 1), logit))
            assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-4), (log_scale, logit)
    # a peaked logistic gives its mean's value almost all the mass
    likelihood.log_scale.data.fill_(-9.0)
    log_p = likelihood.log_prob(values, torch.full((256, 1, 1, 1), math.log(100 / 155)))  # mean 100/255
    assert log_p.argmax().item() == 100 and log_p[100].exp().item() > 0.99


def test_the_discretized_logistic_learns_a_scale_per_channel_and_sums_over_the_image():
    from vaelab.likelihoods import DiscretizedLogistic

    likelihood = DiscretizedLogistic(image_shape=(3, 4, 4))
    assert likelihood.log_scale.shape == (3, 1, 1)
    x = torch.randint(0, 256, (2, 3, 4, 4)).float().div(255)
    out = torch.randn(5, 2, 3, 4, 4, requires_grad=True)
    log_p = likelihood.log_prob(x, out)
    assert log_p.shape == (5, 2) and torch.isfinite(log_p).all() and (log_p < 0).all()
    log_p.sum().backward()
    assert likelihood.log_scale.grad is not None and torch.isfinite(out.grad).all()


def test_a_uniform_8_bit_model_is_8_bits_per_dimension():
    """With q(z | x) = p(z) every importance weight is p(x | z): a likelihood of 1/256 for every
    value of every pixel must come out of vaelab-eval's arithmetic as exactly 8 bits per dimension."""
    from vaelab.module import VAELitModule
    from vaelab.results.evaluation import evaluate_split

    class Uniform8Bit(torch.nn.Module):
        def log_prob(self, x, decoder_output):
            return torch.full(decoder_output.shape[:-3], -math.prod(x.shape[-3:]) * math.log(256))

    model = {
        "latent_dim": 4,
        "net": {
            "encoder": {"_target_": "vaelab.networks.MLPEncoder", "hidden_dims": [8]},
            "decoder": {"_target_": "vaelab.networks.MLPDecoder", "hidden_dims": [8]},
        },
    }
    module = VAELitModule(
        model,
        {"_target_": "vaelab.likelihoods.BernoulliLikelihood"},
        {"_target_": "vaelab.annealing.Constant"},
        image_shape=(3, 8, 8),
        diagnostics=False,
    )
    for head in (module.vae.encoder.heads.mean, module.vae.encoder.heads.logvar):
        torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)  # q(z | x) = N(0, I) = p(z)
    module.objective.likelihood = Uniform8Bit()
    images = torch.randint(0, 256, (6, 3, 8, 8)).float().div(255)
    results = evaluate_split(module, images, torch.zeros(6, dtype=torch.long), k=16, mi_images=6)
    assert results["nll"] == pytest.approx(3 * 8 * 8 * math.log(256))
    assert results["bits_per_dim"] == pytest.approx(8.0)
