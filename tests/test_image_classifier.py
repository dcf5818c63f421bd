"""Classifier, CVAE class accuracy, classifier-feature FID and out-of-distribution AUROC."""

import json
from types import SimpleNamespace

import pytest
import torch
from helpers import FAST, child_env, compose, synthetic_digits, vaelab_cli

from vaelab.results.evaluation import generation_quality, ood_auroc
from vaelab.results.image_classifier import (
    classifier_fid,
    load_classifier,
    save_classifier,
    train_classifier,
)
from vaelab.training import train


@pytest.fixture(scope="module")
def classifier_file(data_root, tmp_path_factory):
    model, test_accuracy = train_classifier("mnist", str(data_root), epochs=8, batch_size=32, seed=0)
    path = tmp_path_factory.mktemp("classifiers") / "mnist.pt"
    save_classifier(model, test_accuracy, "mnist", path)
    return path


def block_images(labels: torch.Tensor) -> torch.Tensor:
    """Clean synthetic images of the given classes (no noise), (N, 1, 28, 28) in [0, 1]."""
    images = torch.zeros(len(labels), 1, 28, 28)
    for i, label in enumerate(labels.tolist()):
        row, col = divmod(label, 4)
        images[i, 0, 2 + 8 * row : 10 + 8 * row, 2 + 6 * col : 10 + 6 * col] = 1.0
    return images


class FakeCVAE:
    """Stands in for a trained CVAE: 'generates' the block of the requested class (or of a shifted class)."""

    def __init__(self, shift=0):
        self.vae = SimpleNamespace(
            num_classes=10,
            conditional=True,
            prior=lambda n, device=None: torch.distributions.Normal(torch.zeros(n, 2), 1.0),
        )
        self.device, self.shift = "cpu", shift

    def generate(self, z, labels):
        return block_images((labels + self.shift) % 10)


def test_classifier_learns_the_synthetic_classes_and_round_trips(classifier_file):
    model, test_accuracy = load_classifier(classifier_file)
    assert test_accuracy >= 0.9
    images, labels = synthetic_digits(60, seed=2)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    assert (model(x).argmax(1) == torch.from_numpy(labels).long()).float().mean() == pytest.approx(test_accuracy)


def test_cvae_class_accuracy_is_one_for_right_classes_and_zero_for_wrong(classifier_file):
    real = block_images(torch.arange(10).repeat(20))
    right = generation_quality(FakeCVAE(shift=0), classifier_file, real, samples_per_class=20)
    wrong = generation_quality(FakeCVAE(shift=3), classifier_file, real, samples_per_class=20)
    assert right["cvae_class_accuracy"] == 1.0 and right["cvae_class_accuracy_per_class"] == [1.0] * 10
    assert wrong["cvae_class_accuracy"] == 0.0
    assert right["classifier_fid"] < 1e-3  # generated == real in distribution


def test_fid_grows_with_the_distance_between_image_sets(classifier_file):
    model, _ = load_classifier(classifier_file)
    torch.manual_seed(0)
    real = block_images(torch.arange(10).repeat(30))
    near = (real + 0.05 * torch.randn_like(real)).clamp(0, 1)
    far = torch.rand_like(real)
    assert classifier_fid(model, real, real) < 1e-3
    assert classifier_fid(model, real, near) < classifier_fid(model, real, far)


def test_ood_auroc():
    assert ood_auroc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0])) == 1.0
    assert ood_auroc(torch.tensor([4.0, 5.0]), torch.tensor([1.0, 2.0])) == 0.0
    assert ood_auroc(torch.tensor([201.0, 202.5]), torch.tensor([230.0, 260.0])) == 1.0  # nats, far outside [0, 1]
    same = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    assert ood_auroc(same[:2500], same[2500:]) == pytest.approx(0.5, abs=0.03)


def test_eval_reports_cvae_accuracy_fid_and_ood_auroc(classifier_file, data_root, tmp_path):
    cfg = compose(
        [*FAST, "trainer.max_epochs=4", "model=cvae", "model.latent_dim=4", "logger=none", "test=false"],
        output_dir=tmp_path,
        data_root=data_root,
    )
    train(cfg)
    env = child_env()
    result = vaelab_cli(
        "evaluate",
        f"ckpt={tmp_path / 'checkpoints' / 'last.ckpt'}",
        "k=16",
        f"data_root={data_root}",
        f"classifier_dir={classifier_file.parent}",
        "samples_per_class=20",
        "ood=fashion_mnist",
        "wandb=false",
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((tmp_path / "checkpoints" / "last.eval.json").read_text())
    assert 0.0 <= saved["test/cvae_class_accuracy"] <= 1.0 and len(saved["test/cvae_class_accuracy_per_class"]) == 10
    assert saved["test/classifier_fid"] >= 0
    assert saved["test/ood_auroc_vs_fashion_mnist"] > 0.9  # stripes are unlike the blocks it was trained on
