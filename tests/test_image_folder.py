"""A folder of PNG and JPEG images: classes from subfolders, sizes, bad files, and the cache."""

import pytest
import torch
from helpers import write_image_folder
from torchvision.io import decode_image

from vaelab import image_folder
from vaelab.errors import DataCorruptError, DataNotFoundError
from vaelab.image_folder import CACHE_DIR, load_folder


def test_class_subfolders_give_the_labels_and_every_image_is_resized_and_cropped(tmp_path):
    root = write_image_folder(tmp_path / "images", per_class=6, classes=3, size=(40, 36))
    folder = load_folder(root, image_size=32, channels=None, bad_files="skip")
    assert folder.images.shape == (18, 3, 32, 32) and folder.images.dtype == torch.uint8
    assert folder.classes == ["class_0", "class_1", "class_2"]
    assert folder.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert folder.files[0] == "class_0/000.png" and folder.skipped == []
    # 40x36 resized so that the shorter side is 32 (to 35x32), then its middle 32 rows: the PNG's pixels
    original = decode_image(str(root / "class_0" / "000.png")).float()
    scaled = torch.nn.functional.interpolate(original[None], size=(35, 32), mode="bilinear", antialias=True)[0]
    assert (folder.images[0].float() - scaled[:, 2:34, :].round()).abs().max() <= 2


def test_a_grey_folder_without_subfolders_is_one_class_at_its_own_size(tmp_path):
    root = write_image_folder(tmp_path / "images", per_class=5, classes=0, size=(28, 28), rgb=False)
    folder = load_folder(root, image_size=None, channels=None, bad_files="skip")
    assert folder.images.shape == (5, 1, 28, 28) and folder.classes == ["images"]
    assert load_folder(root, image_size=None, channels=3, bad_files="skip").images.shape == (5, 3, 28, 28)


def test_bad_files_are_skipped_and_counted_or_refused_naming_the_first(tmp_path, caplog):
    root = write_image_folder(tmp_path / "images", per_class=4, classes=2)
    (root / "class_0" / "002.png").write_bytes((root / "class_0" / "002.png").read_bytes()[:60])  # truncated
    (root / "class_1" / "notes.jpg").write_text("not an image")
    folder = load_folder(root, image_size=32, channels=None, bad_files="skip")
    assert len(folder.files) == 7 and folder.skipped == ["class_0/002.png", "class_1/notes.jpg"]
    assert "skipped 2 file(s) that are not readable images, e.g. class_0/002.png" in caplog.text
    with pytest.raises(DataCorruptError, match=r"class_0/002.png is not a readable PNG or JPEG image") as error:
        load_folder(root, image_size=32, channels=None, bad_files="error")
    assert "\n" not in str(error.value)


def test_different_sizes_without_image_size_and_an_empty_folder_are_one_line(tmp_path):
    root = write_image_folder(tmp_path / "images", per_class=2, classes=1, size=(28, 28))
    write_image_folder(tmp_path / "images", per_class=2, classes=0, size=(32, 32))  # loose files are left out...
    write_image_folder(tmp_path / "other" / "class_9", per_class=2, classes=0, size=(32, 32))
    (root / "class_9").symlink_to(tmp_path / "other" / "class_9")
    with pytest.raises(
        DataCorruptError, match=r"images of different sizes \(28x28, 32x32, \.\.\.\): set data.image_size"
    ):
        load_folder(root, image_size=None, channels=None, bad_files="skip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match=r"holds no PNG or JPEG images"):
        load_folder(tmp_path / "empty", image_size=32, channels=None, bad_files="skip")


def test_the_cache_spares_decoding_and_a_changed_file_makes_a_new_one(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "images", per_class=4, classes=2)
    first = load_folder(root, image_size=32, channels=None, bad_files="skip")
    (cache,) = (root / CACHE_DIR).iterdir()
    decoded = []
    real_decode = image_folder.decode
    monkeypatch.setattr(image_folder, "decode", lambda *a: decoded.append(a) or real_decode(*a))
    again = load_folder(root, image_size=32, channels=None, bad_files="skip")
    assert decoded == [] and torch.equal(again.images, first.images) and again.files == first.files
    (root / "class_1" / "000.png").write_bytes((root / "class_0" / "000.png").read_bytes())  # one image changed
    changed = load_folder(root, image_size=32, channels=None, bad_files="skip")
    assert len(decoded) == 8 and len(list((root / CACHE_DIR).iterdir())) == 2  # decoded again, under a new key
    assert torch.equal(changed.images[4], first.images[0])
    load_folder(root, image_size=28, channels=None, bad_files="skip", cache_allowed=False)
    assert len(list((root / CACHE_DIR).iterdir())) == 2 and cache.exists()  # not cached: a folder from elsewhere
