"""The hand-written PyTorch paths (b), (b') and (c), and the compute floor: the VAE of
pytorch/examples, its loop over in-memory tensors, torchvision's DataLoader path."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import BATCH


class PlainVAE(nn.Module):
    """The pytorch/examples VAE: 784-400-20, ReLU, Bernoulli logits."""

    def __init__(self, latent_dim: int = 20, hidden: int = 400):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = (
            nn.Linear(784, hidden),
            nn.Linear(hidden, latent_dim),
            nn.Linear(hidden, latent_dim),
        )
        self.fc3, self.fc4 = nn.Linear(latent_dim, hidden), nn.Linear(hidden, 784)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        mean, logvar = self.fc21(h), self.fc22(h)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        return self.fc4(F.relu(self.fc3(z))), mean, logvar


def plain_loss(logits, x, mean, logvar):
    """Negative ELBO, nats per image: summed over pixels and latents, averaged over the batch."""
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kl = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp())
    return (recon + kl) / x.shape[0]


class Meter:
    """Images per second over the steps after `warmup`."""

    def __init__(self, warmup: int):
        self.warmup, self.steps, self.images, self.started = warmup, 0, 0, None

    def step(self, batch_size: int) -> None:
        self.steps += 1
        if self.steps == self.warmup:
            self.started = time.perf_counter()
        elif self.steps > self.warmup:
            self.images += batch_size
        self.ended = time.perf_counter()

    @property
    def images_per_second(self) -> float:
        return self.images / (self.ended - self.started)


def synchronize(device: str) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so that a clock read after it
    counts that work; nothing to wait for on a CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def plain_model(fused: bool | None, device: str = "cpu") -> tuple[PlainVAE, torch.optim.Optimizer]:
    """A fresh PlainVAE on ``device`` and its Adam. fused=None is torch's default Adam, as
    pytorch/examples writes it (the per-tensor loop on a CPU); fused=True is the fused kernel that
    vaelab's configs use."""
    torch.manual_seed(0)
    model = PlainVAE().to(device)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)


def binarizer(fused: bool | None):
    """How a plain loop draws its binary pixels: (b), pytorch/examples' way, with torch.bernoulli;
    (b') (fused=True) as vaelab does, with vaelab.data.draw_bits (several times cheaper per batch
    on a CPU, docs/benchmarks.md), so that (a)/(b') leaves out only Lightning and vaelab's training
    code. Returns a function from grey levels to bits of the same shape."""
    if not fused:
        return torch.bernoulli
    from vaelab.data import draw_bits

    return draw_bits


def plain_step(model: PlainVAE, optimizer: torch.optim.Optimizer, x: torch.Tensor, binarize=torch.bernoulli) -> int:
    """One training step on a batch of grey levels (B, 784), binarized by ``binarize``; returns
    the batch size."""
    x = binarize(x)  # dynamic binarization, per batch
    logits, mean, logvar = model(x)
    loss = plain_loss(logits, x, mean, logvar)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return len(x)


def train_loop(batches, epochs: int, warmup: int, max_steps: int | None = None, fused: bool | None = None) -> float:
    """Train a fresh PlainVAE on the batches (a callable returning an iterator of (B, 784) floats)."""
    model, optimizer = plain_model(fused)
    binarize, meter = binarizer(fused), Meter(warmup)
    for _ in range(epochs):
        for x in batches():
            meter.step(plain_step(model, optimizer, x, binarize))
            if max_steps and meter.steps >= max_steps:
                return meter.images_per_second
    return meter.images_per_second


def in_memory_batches(images: torch.Tensor, device: str = "cpu"):
    """A callable returning the batches of one epoch: (B, 784) slices of one float tensor held on
    ``device``, in a new random order every epoch."""
    x_all = images.to(device).float().div(255).view(len(images), -1)

    def batches():
        order = torch.randperm(len(x_all), device=x_all.device)
        for start in range(0, len(order), BATCH):
            yield x_all[order[start : start + BATCH]]

    return batches


def bench_plain(images: torch.Tensor, epochs: int, warmup: int, fused: bool | None = None) -> float:
    """(b): batches sliced from in-memory tensors. With fused=True, (b'): vaelab's fused Adam and
    its draw_bits."""
    return train_loop(in_memory_batches(images), epochs, warmup, fused=fused)


def bench_torchvision(root: str, steps: int, warmup: int) -> float:
    """(c): torchvision MNIST with a per-sample ToTensor, through a DataLoader (pytorch/examples)."""
    from torchvision import datasets, transforms

    dataset = datasets.MNIST(root, train=True, download=False, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True)
    return train_loop(lambda: (x.view(len(x), -1) for x, _ in loader), epochs=10, warmup=warmup, max_steps=steps)


def bench_compute_floor(repeats: int = 300) -> float:
    """Images/s of a step that does nothing but the five 128x784x400 float32 matrix products of the
    784-400-20 VAE (encoder and decoder layers forward; the decoder layer's weight and input
    gradients and the encoder layer's weight gradient backward) and one fused Adam update of all
    its parameters: an upper bound for (a), (b) and (b') on the machine it runs on."""
    torch.manual_seed(0)
    model, optimizer = plain_model(fused=True)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    x, hidden, grad_out = torch.rand(BATCH, 784), torch.rand(BATCH, 400), torch.randn(BATCH, 784)
    encoder_weight, decoder_weight = model.fc1.weight.detach(), model.fc4.weight.detach()  # (400, 784), (784, 400)

    def step():
        F.linear(x, encoder_weight), F.linear(hidden, decoder_weight)
        grad_out.t().mm(hidden), grad_out.mm(decoder_weight), hidden.t().mm(x)
        optimizer.step()

    for _ in range(20):
        step()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return BATCH * repeats / (time.perf_counter() - started)
