"""Every data set as one LightningDataModule, served from in-memory tensors.

Where the images come from (``source``):
- ``builtin``: MNIST or Fashion-MNIST (``name``), their IDX files read by torchvision;
- ``torchvision``: a class of ``torchvision.datasets`` (``name``, e.g. KMNIST or CIFAR10);
- ``folder``: a folder of PNG and JPEG files (``root``; class subfolders give the labels), decoded
  once and cached (``vaelab.image_folder``), split into train/val/test by ``split_seed``.

The images are decoded once into uint8 tensors, resized and centre-cropped to ``image_size``
when it is set, converted once to float32 (N, C, H, W) in [0, 1], and every batch is a slice of
those tensors: there is no per-sample PIL transform and no collate loop.

Binarization (``binarize``):
- ``none``: grey levels in [0, 1].
- ``static``: every split is binarized once, with a fixed seed (Larochelle-style fixed bits).
- ``dynamic``: training batches are re-binarized every time they are drawn
  (x ~ Bernoulli(pixel intensity)); the validation and test splits are binarized once with
  a fixed seed so that their numbers are repeatable.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vaelab.config import DataSchema, check
from vaelab.datasets import DATASETS, load_split, load_torchvision, resize_images, to_float_images
from vaelab.errors import ConfigError
from vaelab.image_folder import load_folder
from vaelab.tensor_data import registered


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
    """A seeded train/val split of the training images and a test set (a data set's own, or a
    seeded share of a folder's images).

    Batches are ``(x, y)``: x float32 (B, C, H, W) in [0, 1] (or {0, 1} when binarized), y int64
    (B,) class labels. ``image_shape`` is (C, H, W): (1, 28, 28) for MNIST, the images' own (or
    ``image_size``) otherwise, known once the images are read (``setup``).
    """

    def __init__(
        self,
        name: str = "mnist",
        root: str = "data",
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int | None = 5000,
        binarize: str = "dynamic",
        split_seed: int = 0,
        binarize_seed: int = 0,
        download: bool = True,
        num_workers: int = 0,
        shuffle_seed: int = 0,
        data_on_device: bool = True,
        source: str = "builtin",
        image_size: int | None = None,
        channels: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        bad_files: str = "skip",
        cache: bool = True,
        tensor_key: str | None = None,
        tensor_summary: str | None = None,
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
                "source": source,
                "image_size": image_size,
                "channels": channels,
                "val_fraction": val_fraction,
                "test_fraction": test_fraction,
                "bad_files": bad_files,
                "cache": cache,
                "tensor_key": tensor_key,
                "tensor_summary": tensor_summary,
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
        self.source, self.image_size, self.channels, self.bad_files = source, image_size, channels, bad_files
        self.val_fraction, self.test_fraction, self.cache = val_fraction, test_fraction, cache
        self.tensor_key, self.tensor_summary = tensor_key, tensor_summary
        self.pool: tuple[list[str], list[str]] | None = None  # a folder's (train, test) files
        self.split_record: dict[str, list[str]] | None = None  # a folder's files per split, saved with the run
        builtin = source == "builtin"
        self.image_shape = (1, image_size or 28, image_size or 28) if builtin else None  # else known once read
        self.classes: list[str] = list(DATASETS[name].classes) if builtin else []
        self.train_set = self.val_set = self.test_set = None
        self.batches_per_fetch = 1  # training batches per fetch: set by vaelab.training for steps_per_fetch

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def prepare_data(self) -> None:
        if self.train_set is not None:  # already read (train.py reads the data before starting loggers)
            return
        if self.source == "builtin":
            for train in (True, False):
                load_split(self.name, self.root, train, self.download)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.load()
        device = self.accelerator_device()
        if device is not None:  # MNIST is 200 MB as float32: it fits on any GPU, and batches need no copy
            for dataset in (self.train_set, self.val_set, self.test_set):
                dataset.to(device)

    def read_images(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(train images, train labels, test images, test labels): uint8 (N, C, H, W) and int64
        (N,), from the source, at ``image_size`` when it is set; ``classes`` is set on the way."""
        if self.source in ("folder", "tensors"):  # one pool of images: a seeded share is the test set
            if self.source == "folder":
                folder = load_folder(self.root, self.image_size, self.channels, self.bad_files, self.cache)
                images, labels, self.classes = folder.images, folder.labels, folder.classes
            else:
                images, labels = registered(self.tensor_key, self.tensor_summary)
                self.classes = [str(c) for c in range(int(labels.max()) + 1)]
                if self.image_size is not None and images.dtype == torch.uint8:
                    images = resize_images(images, self.image_size)
            n = len(labels)
            test_count = round(self.test_fraction * n)
            if n - test_count < 2:
                raise ConfigError(f"data: {n} usable images are too few to split into train, val and test")
            # its own seed, so that a different split_seed for validation leaves the test set as it is
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed + 1_000_003))
            test, train = order[:test_count], order[test_count:]
            if self.source == "folder":  # the files of each split, for split_record
                self.pool = ([folder.files[i] for i in train.tolist()], [folder.files[i] for i in test.tolist()])
            return images[train], labels[train], images[test], labels[test]
        read = load_split if self.source == "builtin" else load_torchvision
        train_images, train_labels, self.classes = read(self.name, self.root, True, self.download)
        test_images, test_labels, _ = read(self.name, self.root, False, self.download)
        train_images, test_images = (x.unsqueeze(1) if x.dim() == 3 else x for x in (train_images, test_images))
        channels = self.channels or train_images.shape[1]
        if channels != train_images.shape[1]:
            raise ConfigError(f"data.channels={self.channels}: {self.name} has {train_images.shape[1]}-channel images")
        if self.image_size is not None:
            train_images, test_images = (resize_images(x, self.image_size) for x in (train_images, test_images))
        return train_images, train_labels, test_images, test_labels

    def load(self) -> None:
        """Read the images, split, binarize: the three in-memory data sets (on the CPU)."""
        train_images, train_labels, test_images, test_labels = self.read_images()
        n_train = len(train_labels)
        val_size = self.val_size if self.val_size is not None else round(self.val_fraction * n_train)
        if not 0 <= val_size < n_train:
            raise ConfigError(f"data.val_size must be in [0, {n_train}), got {val_size}")
        self.image_shape = tuple(train_images.shape[1:])
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(self.split_seed))
        val_index, train_index = order[:val_size], order[val_size:]
        train_x, val_x, test_x = (
            to_float_images(x) for x in (train_images[train_index], train_images[val_index], test_images)
        )
        if self.binarize == "static":
            train_x = binarize_once(train_x, self.binarize_seed)
        if self.binarize in ("static", "dynamic"):
            val_x = binarize_once(val_x, self.binarize_seed + 1)
            test_x = binarize_once(test_x, self.binarize_seed + 2)
        if self.pool is not None:
            train_files, test_files = self.pool
            self.split_record = {
                "train": [train_files[i] for i in train_index.tolist()],
                "val": [train_files[i] for i in val_index.tolist()],
                "test": test_files,
            }
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
        # K batches at once are K * batch_size consecutive images of the same shuffled order
        return self._loader(self.train_set, self.batch_size * self.batches_per_fetch, shuffle=True)

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

    def ood_images(self, other: str, split: str) -> InMemoryImages:
        """Images of another data set prepared as this one's test images are, for out-of-distribution
        scores, at this data's image shape (C, H, W) and binarization: the ``split`` of MNIST or
        Fashion-MNIST (``other`` a name; from this data's root when it is one of the two, else from
        $VAELAB_DATA_DIR or ``data``, never downloaded), or every image of a folder (a path)."""
        channels, height, width = self.image_shape
        if height != width and not (other in DATASETS and self.source == "builtin"):
            raise ConfigError(f"ood={other}: other images are read as squares, and this data's are {height}x{width}")
        if other in DATASETS:
            own_root = self.source == "builtin"
            like = VAEDataModule(
                name=other,
                root=self.root if own_root else os.environ.get("VAELAB_DATA_DIR", "data"),
                val_size=self.val_size if own_root else 0,
                binarize=self.binarize,
                split_seed=self.split_seed,
                binarize_seed=self.binarize_seed,
                download=self.download and own_root,
                image_size=self.image_size if own_root else height,
            )
            like.setup("test")
            dataset = like.val_set if split == "val" and len(like.val_set) else like.test_set
            return InMemoryImages(dataset.images.expand(-1, channels, -1, -1), dataset.labels)
        folder = load_folder(Path(other), height, channels, bad_files="skip")
        images = to_float_images(folder.images)
        if self.binarize in ("static", "dynamic"):
            images = binarize_once(images, self.binarize_seed + 2)
        return InMemoryImages(images, folder.labels)
