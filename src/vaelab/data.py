"""MNIST and Fashion-MNIST as one LightningDataModule, served from in-memory tensors.

torchvision's dataset classes decode the IDX files once into uint8 tensors. They are
converted once to float32 images of shape (N, 1, 28, 28) with values in [0, 1], and every
batch is a slice of those tensors: there is no per-sample PIL transform and no collate loop.

Binarization (``binarize``):
- ``none``: grey levels in [0, 1].
- ``static``: every split is binarized once, with a fixed seed (Larochelle-style fixed bits).
- ``dynamic``: training batches are re-binarized every time they are drawn
  (x ~ Bernoulli(pixel intensity)); the validation and test splits are binarized once with
  a fixed seed so that their numbers are repeatable.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vaelab.config import DataSchema, check
from vaelab.datasets import DATASETS, load_split, to_float_images
from vaelab.errors import ConfigError


def binarize_once(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Draw x ~ Bernoulli(images) once, with its own seeded generator. Same shape, values {0, 1}."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(images, generator=generator)


def draw_bits(probs: torch.Tensor) -> torch.Tensor:
    """x ~ Bernoulli(probs), elementwise, with the global RNG: same shape and dtype, values {0, 1}.

    On the CPU each pixel gets 16 random bits (see ``bits_from_noise``), four pixels to one
    64-bit draw of torch's Mersenne twister, a quarter of the generator calls of
    ``torch.rand_like(p) < p`` (timings: docs/benchmarks.md). On a GPU, where random numbers cost
    next to nothing, it is ``rand_like(p) < p``."""
    if probs.device.type != "cpu":
        return (torch.rand_like(probs) < probs).to(probs.dtype)
    n = probs.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # all 64 bits
    return bits_from_noise(words.view(torch.int16)[:n].view(probs.shape), probs)


def bits_from_noise(noise: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """1 where the uniform 16-bit integer noise s in [-32768, 32767] (int16) is below 65536 p - 32768.5.

    So P(1) = round(65536 p) / 65536: p to within 2^-17, p = 0 never and p = 1 always (the grey
    levels themselves are multiples of 1/255). Same shape and dtype as probs."""
    below = torch.lt(noise, probs.mul(65536).sub_(32768.5))
    return below.view(torch.uint8).to(probs.dtype)  # via uint8: cheaper than casting bool to float


def keep_batch(batch):
    """collate_fn for datasets that already return whole batches."""
    return batch


class InMemoryImages(Dataset):
    """Images (N, C, H, W) float32 and labels (N,) int64 held in memory.

    ``__getitems__`` returns a whole batch ``(x, y)`` by slicing, which the DataLoader calls
    with the sampler's list of indices; with ``dynamic_binarize`` the batch is re-binarized
    with the global RNG (seeded by ``seed_everything``).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, dynamic_binarize: bool = False):
        assert images.shape[0] == labels.shape[0], (images.shape, labels.shape)
        self.images = images
        self.labels = labels
        self.dynamic_binarize = dynamic_binarize

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> InMemoryImages:
        """Move the tensors (e.g. onto the GPU, so that batches are sliced there). Returns self."""
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        return self

    def __getitem__(self, index: int):
        x, y = self.__getitems__([index])
        return x[0], y[0]

    def __getitems__(self, indices):
        index = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        x = self.images[index]
        if self.dynamic_binarize:
            x = draw_bits(x)
        return x, self.labels[index]


class EpochShuffle(Sampler):
    """A permutation of range(n) drawn from (seed + epoch) alone.

    Lightning calls ``set_epoch`` before every epoch, so an epoch's order is the same
    whether the run got there uninterrupted or by resuming from a checkpoint.
    """

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


class VAEDataModule(L.LightningDataModule):
    """MNIST or Fashion-MNIST: a seeded train/val split of the 60k training images, and the 10k test set.

    Batches are ``(x, y)``: x float32 (B, 1, 28, 28) in [0, 1] (or {0, 1} when binarized),
    y int64 (B,) class labels.
    """

    def __init__(
        self,
        name: str = "mnist",
        root: str = "data",
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        binarize: str = "dynamic",
        split_seed: int = 0,
        binarize_seed: int = 0,
        download: bool = True,
        num_workers: int = 0,
        shuffle_seed: int = 0,
        data_on_device: bool = True,
    ):
        super().__init__()
        check(
            "data",
            DataSchema,
            {
                "name": name,
                "root": root,
                "batch_size": batch_size,
                "eval_batch_size": eval_batch_size,
                "val_size": val_size,
                "binarize": binarize,
                "num_workers": num_workers,
            },
        )
        self.name = name
        self.root = root
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.binarize = binarize
        self.split_seed = split_seed
        self.binarize_seed = binarize_seed
        self.download = download
        self.num_workers = num_workers
        self.shuffle_seed = shuffle_seed
        self.data_on_device = data_on_device
        self.image_shape = (1, 28, 28)
        self.classes: list[str] = list(DATASETS[name].classes)
        self.train_set = self.val_set = self.test_set = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def prepare_data(self) -> None:
        if self.train_set is not None:  # already read (train.py reads the data before starting loggers)
            return
        for train in (True, False):
            load_split(self.name, self.root, train, self.download)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.load()
        device = self.accelerator_device()
        if device is not None:  # MNIST is 200 MB as float32: it fits on any GPU, and batches need no copy
            for dataset in (self.train_set, self.val_set, self.test_set):
                dataset.to(device)

    def load(self) -> None:
        """Read the IDX files, split, binarize: the three in-memory data sets (on the CPU)."""
        train_images, train_labels, self.classes = load_split(self.name, self.root, True, self.download)
        test_images, test_labels, _ = load_split(self.name, self.root, False, self.download)
        if not 0 <= self.val_size < len(train_labels):
            raise ConfigError(f"data.val_size must be in [0, {len(train_labels)}), got {self.val_size}")
        order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(self.split_seed))
        val_index, train_index = order[: self.val_size], order[self.val_size :]
        train_x, val_x, test_x = (to_float_images(train_images[i]) for i in (train_index, val_index, slice(None)))
        if self.binarize == "static":
            train_x = binarize_once(train_x, self.binarize_seed)
        if self.binarize in ("static", "dynamic"):
            val_x = binarize_once(val_x, self.binarize_seed + 1)
            test_x = binarize_once(to_float_images(test_images), self.binarize_seed + 2)
        else:
            test_x = to_float_images(test_images)
        self.train_set = InMemoryImages(train_x, train_labels[train_index], self.binarize == "dynamic")
        self.val_set = InMemoryImages(val_x, train_labels[val_index])
        self.test_set = InMemoryImages(test_x, test_labels)

    def accelerator_device(self) -> torch.device | None:
        """The trainer's GPU (or other accelerator) when the data should live there, else None."""
        trainer = getattr(self, "trainer", None)
        if not (self.data_on_device and self.num_workers == 0 and trainer is not None):
            return None
        device = trainer.strategy.root_device
        return device if device.type != "cpu" else None

    def _loader(self, dataset: InMemoryImages, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=EpochShuffle(len(dataset), self.shuffle_seed) if shuffle else None,
            generator=torch.Generator().manual_seed(self.shuffle_seed),  # worker seeds: not from the global RNG
            drop_last=False,
            collate_fn=keep_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def fixed_batch(self, split: str = "val", n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n images and labels of a split: the same ones every epoch, for image panels."""
        dataset = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[split]
        if dataset is None:
            self.setup()
            dataset = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[split]
        n = min(n, len(dataset))
        return dataset.images[:n], dataset.labels[:n]

    def like(self, name: str) -> VAEDataModule:
        """Another data set prepared exactly as this one (root, split, binarization, seeds), set up for testing."""
        other = VAEDataModule(
            name=name,
            root=self.root,
            val_size=self.val_size,
            binarize=self.binarize,
            split_seed=self.split_seed,
            binarize_seed=self.binarize_seed,
            download=self.download,
        )
        other.setup("test")
        return other
