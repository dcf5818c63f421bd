"""VAEDataModule: seeded splits, epoch order, binarization, batches that match per-sample indexing."""

import json
import math

import pytest
import torch
from helpers import FAST, synthetic_digits, write_image_folder, write_synthetic_dataset
from torchvision.io import write_png

from vaelab.data import (
    InMemoryImages,
    VAEDataModule,
    bits_from_noise,
    draw_bits,
)
from vaelab.errors import ConfigError, DataNotFoundError


def make(data_root, **kwargs):
    dm = VAEDataModule(root=str(data_root), **{"val_size": 40, "batch_size": 32, "binarize": "none", **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_split_is_seeded(data_root):
    a, b, c = make(data_root, split_seed=0), make(data_root, split_seed=0), make(data_root, split_seed=1)
    assert torch.equal(a.val_set.labels, b.val_set.labels) and torch.equal(a.val_set.images, b.val_set.images)
    assert not torch.equal(a.val_set.images, c.val_set.images)


def test_batches_match_per_sample_indexing_in_the_sampler_order(data_root):
    """The fast path (whole-batch slicing) yields what a per-sample loader would, in the sampler's order."""
    dm = make(data_root, binarize="none")
    loader = dm.train_dataloader()
    order = list(loader.sampler)
    batches = list(loader)
    assert len(batches) == 7 and sorted(order) == list(range(200))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(x, torch.stack([dm.train_set[i][0] for i in order]))
    assert torch.equal(y, torch.stack([dm.train_set[i][1] for i in order]))


def test_epoch_order_depends_only_on_seed_and_epoch(data_root):
    dm = make(data_root)
    sampler = dm.train_dataloader().sampler
    first = list(sampler)
    torch.manual_seed(123)  # the global RNG plays no part
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    other = make(data_root).train_dataloader().sampler
    other.set_epoch(1)
    assert list(other) == second
    assert list(make(data_root, shuffle_seed=5).train_dataloader().sampler) != first


def test_static_binarization_is_fixed(data_root):
    a, b = make(data_root, binarize="static"), make(data_root, binarize="static")
    assert set(a.train_set.images.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(a.train_set.images, b.train_set.images)
    first, second = next(iter(a.train_dataloader())), next(iter(a.train_dataloader()))
    assert set(first[0].unique().tolist()) <= {0.0, 1.0} and set(second[0].unique().tolist()) <= {0.0, 1.0}


def test_dynamic_binarization_redraws_training_bits_with_the_right_mean():
    grey = torch.full((4000, 1, 28, 28), 0.3)
    dataset = InMemoryImages(grey, torch.zeros(4000, dtype=torch.long), dynamic_binarize=True)
    x1, _ = dataset.__getitems__(list(range(4000)))
    x2, _ = dataset.__getitems__(list(range(4000)))
    assert set(x1.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(x1, x2)
    assert x1.mean().item() == pytest.approx(0.3, abs=0.003)


def test_dynamic_bits_are_bernoulli_at_every_grey_level():
    levels = torch.tensor([0.0, 1 / 255, 0.1, 0.5, 0.9, 254 / 255, 1.0])
    probs = levels.view(1, -1).expand(200_000, -1).contiguous()
    bits = draw_bits(probs)
    assert bits.dtype == probs.dtype and set(bits.unique().tolist()) <= {0.0, 1.0}
    assert bits[:, 0].sum() == 0 and bits[:, -1].sum() == len(bits)  # p = 0 never, p = 1 always
    standard_error = (levels * (1 - levels) / len(bits)).sqrt()
    assert ((bits.mean(0) - levels).abs() <= 5 * standard_error + 1e-9).all(), bits.mean(0) - levels


def test_bits_have_the_grey_level_as_probability_to_within_2_to_the_minus_17():
    """Every grey level g / 255 against every one of the 65536 noise values: the exact probability."""
    noise = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(-1, 1)
    levels = (torch.arange(256, dtype=torch.float32) / 255).view(1, -1)
    probability = bits_from_noise(noise, levels.expand(len(noise), -1)).double().mean(0)
    assert probability[0] == 0 and probability[-1] == 1
    assert (probability - levels.double().view(-1)).abs().max() <= 2**-17


def test_dynamic_binarization_fixes_val_and_test(data_root):
    a, b = make(data_root, binarize="dynamic"), make(data_root, binarize="dynamic")
    assert a.train_set.dynamic_binarize and not a.val_set.dynamic_binarize
    assert set(a.val_set.images.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(a.val_set.images, b.val_set.images) and torch.equal(a.test_set.images, b.test_set.images)
    assert a.train_set.images.unique().numel() > 2  # kept grey; bits are drawn per batch


def test_unknown_name_and_binarize_are_refused(data_root):
    with pytest.raises(ValueError, match="data.name"):
        VAEDataModule(name="cifar10")
    with pytest.raises(ValueError, match="data.binarize"):
        VAEDataModule(binarize="sometimes")


def test_written_root_gets_no_extra_files(tmp_path):
    root = write_synthetic_dataset(tmp_path, "mnist")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    make(root)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_fast_path_equals_torchvisions_per_sample_to_tensor(data_root):
    """The in-memory tensors are what pytorch/examples' torchvision MNIST + ToTensor gives, image by image,
    and the per-batch dynamic binarization draws each pixel with its grey level as probability."""
    from torchvision import datasets, transforms

    dm = make(data_root, binarize="none")
    reference = datasets.MNIST(str(data_root), train=False, download=False, transform=transforms.ToTensor())
    assert torch.equal(dm.test_set.images, torch.stack([reference[i][0] for i in range(len(reference))]))
    assert dm.test_set.labels.tolist() == [reference[i][1] for i in range(len(reference))]

    grey = dm.test_set.images[:8]
    dynamic = InMemoryImages(grey, dm.test_set.labels[:8], dynamic_binarize=True)
    torch.manual_seed(0)
    draws = torch.stack([dynamic.__getitems__(list(range(8)))[0] for _ in range(400)])
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    assert (draws.mean(0) - grey).abs().max() < 0.1  # 400 draws: standard error <= 0.025 per pixel
    assert draws.mean().item() == pytest.approx(grey.mean().item(), rel=0.02)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_loads_synthetic_idx_through_torchvision(data_root, name):
    dm = make(data_root, name=name, binarize="none")
    images, labels = synthetic_digits(240, seed=1, stripes=name == "fashion_mnist")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (200, 40, 60)
    assert dm.num_classes == 10 and dm.image_shape == (1, 28, 28)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    # every training image, in [0, 1], is one of the written images scaled by 1/255
    all_x = torch.cat([dm.train_set.images, dm.val_set.images])
    written = torch.from_numpy(images).float().div(255).unsqueeze(1)
    assert torch.equal(all_x.sort(dim=0).values, written.sort(dim=0).values)
    assert sorted(torch.cat([dm.train_set.labels, dm.val_set.labels]).tolist()) == sorted(labels.tolist())


@pytest.mark.realdata
def test_real_mnist(real_data_root):
    dm = make(real_data_root, name="mnist", val_size=5000, binarize="none")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)
    counts = torch.cat([dm.train_set.labels, dm.val_set.labels]).bincount().tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    mean = dm.test_set.images.mean().item()
    assert 0.12 < mean < 0.14  # MNIST's mean intensity is about 0.13


@pytest.mark.realdata
def test_real_fashion_mnist(real_data_root):
    dm = make(real_data_root, name="fashion_mnist", val_size=5000)
    assert dm.classes[0] == "T-shirt/top" and len(dm.test_set) == 10000
    assert dm.test_set.labels.bincount().tolist() == [1000] * 10


def test_a_folder_of_rgb_images_trains_evaluates_and_resumes(tmp_path, data_root, monkeypatch):
    import vaelab

    root = write_image_folder(tmp_path / "images", per_class=20, classes=2, size=(40, 36))
    run = tmp_path / "run"
    settings = [*FAST, "data=folder", f"data.root={root}", "model/net=conv", "logger=csv", "data.val_size=null"]
    result = vaelab.train([*settings, f"hydra.run.dir={run}"])
    checkpoint = torch.load(result.last_checkpoint, weights_only=True)
    assert checkpoint["hyper_parameters"]["image_shape"] == (3, 32, 32)
    assert {p.name for p in (run / "images").iterdir()} >= {"samples", "reconstructions", "latent_scatter"}
    split = json.loads((run / "data_split.json").read_text())  # the files of each split, saved with the run
    assert [len(split[name]) for name in ("train", "val", "test")] == [32, 4, 4]
    assert sorted(sum(split.values(), [])) == sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in (".png", ".jpg")
    )
    evaluated = vaelab.evaluate(result.last_checkpoint, k=4, generation=False)
    assert evaluated["test/n_images"] == 4  # 0.1 of the 40 images, the same four every time
    assert evaluated["test/bits_per_dim"] == pytest.approx(evaluated["test/nll"] / (3 * 32 * 32 * math.log(2)))
    # out of distribution: a folder of grey 48x48 white images, read as RGB 32x32 like the run's
    other = tmp_path / "white images"
    other.mkdir()
    for i in range(6):
        write_png(torch.full((1, 48, 48), 255 - i, dtype=torch.uint8), str(other / f"{i}.png"))
    against = vaelab.evaluate(result.last_checkpoint, k=4, generation=False, ood=str(other), limit_images=3)
    assert against["test/ood_auroc_vs_white_images"] == 1.0 and against["test/ood_images"] == 3
    assert against["ood"] == str(other.resolve())
    monkeypatch.setenv("VAELAB_DATA_DIR", str(data_root))  # MNIST's grey 28x28 digits, read as RGB 32x32
    digits = vaelab.evaluate(result.last_checkpoint, k=4, generation=False, ood="mnist", limit_images=3)
    assert 0.0 <= digits["test/ood_auroc_vs_mnist"] <= 1.0 and digits["test/ood_images"] == 3
    resumed = vaelab.train([f"resume={run}", "trainer.max_epochs=2"])
    assert torch.load(resumed.last_checkpoint, weights_only=True)["epoch"] == 1


def test_a_torchvision_data_set_on_disk_is_read_without_a_download(tmp_path):
    root = write_synthetic_dataset(tmp_path / "data", "kmnist", n_train=50, n_test=20)
    dm = VAEDataModule(source="torchvision", name="KMNIST", root=str(root), val_size=None, download=False)
    dm.setup()
    assert dm.image_shape == (1, 28, 28) and len(dm.classes) == 10
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (45, 5, 20)
    small = VAEDataModule(
        source="torchvision", name="torchvision.datasets.KMNIST", root=str(root), val_size=5, image_size=16
    )
    small.setup()
    assert small.train_set.images.shape[1:] == (1, 16, 16)
    missing = r"data.name=QMNIST: its training files are not under .*data.download=true"
    with pytest.raises(DataNotFoundError, match=missing):
        VAEDataModule(source="torchvision", name="QMNIST", root=str(root), download=False).setup()
    with pytest.raises(ConfigError, match=r"data.name='os.system' is not allowed: a class of torchvision.datasets"):
        VAEDataModule(source="torchvision", name="os.system", root=str(root))
    with pytest.raises(ConfigError, match=r"data.name='utils' is not a data set class of torchvision.datasets"):
        VAEDataModule(source="torchvision", name="utils", root=str(root)).setup()
