"""Images handed over from Python: tensors, NumPy arrays and Datasets, and a run trained on them."""

import numpy as np
import pytest
import torch
from helpers import FAST

import vaelab
from vaelab import tensor_data
from vaelab.errors import ConfigError, DataNotFoundError
from vaelab.tensor_data import as_images, register


class Pairs(torch.utils.data.Dataset):
    """A Dataset of (image (1, 8, 8) float, label) pairs."""

    def __init__(self, n: int):
        self.images = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i % 3


def test_tensors_arrays_and_datasets_become_images_and_labels():
    grey = torch.randint(0, 256, (5, 12, 12), dtype=torch.uint8)
    images, labels = as_images(grey)
    assert images.shape == (5, 1, 12, 12) and images.dtype == torch.uint8 and labels is None
    images, _ = as_images(np.random.default_rng(0).random((4, 3, 8, 8)))
    assert images.shape == (4, 3, 8, 8) and images.dtype == torch.float32
    images, labels = as_images(Pairs(6))
    assert images.shape == (6, 1, 8, 8) and labels.tolist() == [0, 1, 2, 0, 1, 2]
    key, summary = register(grey)
    assert summary == "torch.uint8 (5, 1, 12, 12), 1 class" and register(grey.clone())[0] == key  # keyed by content
    assert register(grey, labels=[0, 1, 0, 1, 0])[0] != key
    for bad, message in (
        (torch.rand(4, 2, 8, 8), r"C 1 or 3"),
        (torch.rand(4, 1, 8, 8) * 3, r"float images must lie in \[0, 1\]"),
        ([1, 2, 3], r"a tensor, a NumPy array or a torch Dataset, not list"),
    ):
        with pytest.raises(ConfigError, match=message):
            register(bad)
    with pytest.raises(ConfigError, match=r"labels: 5 class numbers >= 0 for 5 images, got 2"):
        register(grey, labels=[0, 1])


def test_a_run_on_tensors_records_them_and_its_checkpoint_asks_for_them_again(tmp_path, monkeypatch):
    images = (torch.rand(120, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    labels = torch.arange(120) % 4
    settings = [*FAST, "data.val_size=null", "logger=none", "model/net=conv", f"hydra.run.dir={tmp_path / 'run'}"]
    result = vaelab.train(settings, data=images, labels=labels)
    hparams = torch.load(result.last_checkpoint, weights_only=True)["hyper_parameters"]
    assert hparams["image_shape"] == (3, 16, 16) and hparams["num_classes"] == 4
    assert hparams["data"]["tensor_summary"] == "torch.uint8 (120, 3, 16, 16), 4 classes"
    monkeypatch.setattr(tensor_data, "REGISTERED", {})  # a new process: the images are not kept anywhere
    with pytest.raises(DataNotFoundError, match=r"trained on images handed over from Python \(torch.uint8 \(120"):
        vaelab.evaluate(result.last_checkpoint, k=2, generation=False)
    again = vaelab.evaluate(result.last_checkpoint, k=2, generation=False, data=images, labels=labels)
    assert again["test/n_images"] == 12 and again["test/nll"] > 0  # the same seeded tenth as in training
    monkeypatch.setattr(tensor_data, "REGISTERED", {})
    with pytest.raises(DataNotFoundError):  # other images: another key than the checkpoint's
        vaelab.evaluate(result.last_checkpoint, k=2, generation=False, data=images[:60], labels=labels[:60])


def test_a_dataset_from_python_trains(tmp_path):
    settings = [*FAST, "data.val_size=null", "logger=none", "data.batch_size=16", f"hydra.run.dir={tmp_path / 'run'}"]
    result = vaelab.train(settings, data=Pairs(90))
    assert result.metrics["test/elbo"] < 0
    assert torch.load(result.last_checkpoint, weights_only=True)["hyper_parameters"]["image_shape"] == (1, 8, 8)
