"""The data sets on disk: IDX files read through torchvision, and missing, failed and damaged files."""

import pytest
import torchvision
from helpers import write_synthetic_dataset

from vaelab.datasets import load_split
from vaelab.idx_files import DataCorruptError, DataNotFoundError


def test_missing_data_without_download_says_where_and_how(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        load_split("mnist", tmp_path, train=True, download=False)
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "VAELAB_DATA_DIR" in message


def test_failed_download_gives_the_same_advice(tmp_path, monkeypatch):
    # an address that refuses at once, so the test never waits on a network
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(DataNotFoundError, match="download failed") as error:
        load_split("fashion_mnist", tmp_path, train=False, download=True)
    assert str(tmp_path / "FashionMNIST" / "raw") in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", "bytes, but its header promises"),
        ("magic", "not an uncompressed IDX images file (magic number 2049, expected 2051)"),
        ("count", "holds 240 images but"),
        ("empty", "not an uncompressed IDX images file (magic number None"),
    ],
)
def test_damaged_idx_files_are_named_in_one_line(tmp_path, damage, message):
    root = write_synthetic_dataset(tmp_path, "mnist")
    raw = root / "MNIST" / "raw"
    images, labels = raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte"
    if damage == "truncate":
        images.write_bytes(images.read_bytes()[:-100])
    elif damage == "magic":
        images.write_bytes(labels.read_bytes()[:4] + images.read_bytes()[4:])
    elif damage == "count":
        labels.write_bytes(labels.read_bytes()[:-10][:4] + (230).to_bytes(4, "big") + labels.read_bytes()[8:-10])
    else:
        images.write_bytes(b"")
    with pytest.raises(DataCorruptError) as error:
        load_split("mnist", root, train=True, download=False)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(images) in str(error.value)
