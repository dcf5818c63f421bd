"""A small CNN classifier per data set, to judge generated images.

It reads the grey-level images (never binarized) of the same IDX files, trains with a plain
PyTorch loop over in-memory tensors, and is cached with its test accuracy at
``<log_dir>/classifiers/<data>.pt`` (``vaelab-classifier``). Its 128-d penultimate layer is the
feature space for a Fréchet distance (``classifier_fid``): it needs no Inception weights to be
downloaded, and its FIDs do not compare with Inception FIDs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.datasets import load_split, to_float_images
from vaelab.errors import UserError, first_line
from vaelab.safe_load import read_checkpoint

log = logging.getLogger(__name__)


class SmallCNN(nn.Module):
    """x (B, 1, 28, 28) in [0, 1] -> logits (B, classes); ``features`` gives the (B, 128) penultimate layer."""

    num_features = 128

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(64 * 7 * 7, self.num_features),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(self.num_features, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class FeatureExtractor(nn.Module):
    """The classifier's feature layer as a torchmetrics FID feature extractor: (B, 1, H, W) -> (B, 128)."""

    def __init__(self, classifier: SmallCNN):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x[:, :1] if x.shape[1] == 3 else x)


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum(
        int((model(x).argmax(1) == y).sum())
        for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True)
    )
    return correct / len(labels)


def train_classifier(
    data: str, root: str, epochs: int = 5, batch_size: int = 128, lr: float = 2e-3, seed: int = 0, download: bool = True
):
    """Train on the 60k training images (Adam, cosine-decayed learning rate).
    Returns (model, test accuracy in [0, 1])."""
    torch.manual_seed(seed)
    train_images, train_labels, classes = load_split(data, root, train=True, download=download)
    test_images, test_labels, _ = load_split(data, root, train=False, download=download)
    x, y = to_float_images(train_images), train_labels
    model = SmallCNN(len(classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(y) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    for epoch in range(epochs):
        model.train()
        started = time.perf_counter()
        for index in torch.randperm(len(y)).split(batch_size):
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        log.info("classifier %s epoch %d: %.1f s", data, epoch, time.perf_counter() - started)
    return model, accuracy(model, to_float_images(test_images), test_labels)


def save_classifier(model: SmallCNN, test_accuracy: float, data: str, path: Path) -> None:
    import io

    from vaelab.runs import write_file

    saved = {
        "state_dict": model.state_dict(),
        "test_accuracy": test_accuracy,
        "data": data,
        "num_classes": model.head[-1].out_features,
    }
    buffer = io.BytesIO()  # torch.save turns a failed file write into a RuntimeError
    torch.save(saved, buffer)
    write_file(path, buffer.getbuffer())  # atomic: a killed save leaves no half-written file


def load_classifier(path: str | Path) -> tuple[SmallCNN, float]:
    """(model in eval mode, its test accuracy) from a cached classifier file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no classifier at {path}: train it with `vaelab-classifier data=<mnist|fashion_mnist>`")
    saved = read_checkpoint(path, "classifier")
    try:
        model = SmallCNN(int(saved["num_classes"]))
        model.load_state_dict(saved["state_dict"])
        return model.eval(), float(saved["test_accuracy"])
    except Exception as error:  # noqa: BLE001 - any failure to rebuild means the same to the user
        raise UserError(f"classifier={path} is not a vaelab classifier: {first_line(error)}") from None


@torch.no_grad()
def classifier_fid(classifier: SmallCNN, real: torch.Tensor, fake: torch.Tensor, batch_size: int = 1000) -> float:
    """Fréchet distance between two image sets (N, 1, H, W) in [0, 1], in the classifier's feature space."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(
        feature=FeatureExtractor(classifier.eval()), normalize=True, input_img_size=tuple(real.shape[1:])
    )
    for images, is_real in ((real, True), (fake, False)):
        for batch in images.split(batch_size):
            fid.update(batch, real=is_real)
    return float(fid.compute())
