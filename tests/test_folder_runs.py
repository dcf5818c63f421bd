"""A folder of generated images end to end: a sweep over grey and RGB at 28 and 64 pixels (with
a truncated file and a non-image among the images, every logger on), then vaelab-compare's table
and report, TensorBoard's and W&B's pictures, and vaelab-sample, all in the images' colours."""

import csv
import io

import pytest
from helpers import FAST, child_env, train_cli, vaelab_cli, write_image_folder
from PIL import Image

from vaelab.results.comparison import compare
from vaelab.results.wandb_offline import find_offline_runs, read_offline_run

SIZES = {"1,28": ("L", 28), "1,64": ("L", 64), "3,28": ("RGB", 28), "3,64": ("RGB", 64)}


@pytest.fixture(scope="module")
def folder_sweep(tmp_path_factory):
    base = tmp_path_factory.mktemp("folder_runs")
    images = write_image_folder(base / "images", per_class=10, classes=3, size=(70, 80))
    (images / "class_0" / "cut.png").write_bytes((images / "class_0" / "000.png").read_bytes()[:120])
    (images / "class_1" / "notes.png").write_text("not an image")
    sweep = base / "sweep"
    result = train_cli(
        "-m",
        "data.channels=1,3",
        "data.image_size=28,64",
        *FAST,
        "data=folder",
        f"data.root={images}",
        "data.val_size=null",
        "model/net=conv",
        "model.latent_dim=3",
        "likelihood=discretized_logistic",
        "logger=many",
        "callbacks.image_panels.scatter_images=20",
        f"hydra.sweep.dir={sweep}",
        env=child_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {}
    for job in sorted(p for p in sweep.iterdir() if (p / "checkpoints").is_dir()):
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        channels, size = (
            line.split("=")[1]
            for line in overrides.splitlines()
            if "data.channels" in line or "data.image_size" in line
        )
        runs[f"{channels},{size}"] = job
    assert sorted(runs) == sorted(SIZES)
    return sweep, runs


def opened(png: bytes | object) -> Image.Image:
    return Image.open(io.BytesIO(png) if isinstance(png, bytes) else png)


def assert_panel(image: Image.Image, mode: str, size: int) -> None:
    """A reconstructions panel: tiles of ``size`` pixels with 2-pixel padding, grey or colour; its
    first row (the data's own images, whose channels differ by their noise) in colour when RGB."""
    assert image.mode in ((mode,) if mode == "RGB" else ("L", "RGB"))
    assert (image.width - 2) % (size + 2) == 0 and (image.height - 2) % (size + 2) == 0
    if mode == "RGB":
        red, green, _ = image.crop((2, 2, 2 + size, 2 + size)).split()
        assert list(red.getdata()) != list(green.getdata())
    else:
        red, green, blue = image.convert("RGB").split()
        assert list(red.getdata()) == list(green.getdata()) == list(blue.getdata())


def test_every_job_read_the_folder_skipping_the_two_bad_files(folder_sweep):
    _, runs = folder_sweep
    for key, job in runs.items():
        log = (job / "train.log").read_text()
        assert "skipped 2 file(s) that are not readable images, e.g. class_0/cut.png" in log, key


def test_compare_tables_and_reports_the_folder_runs(folder_sweep, tmp_path):
    sweep, _ = folder_sweep
    written = compare([sweep], tmp_path / "compare")
    with open(written["csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and {row["status"] for row in rows} == {"ok"} and {row["data"] for row in rows} == {"folder"}
    # a discretized likelihood gives probabilities: the ELBO of 8-bit images is below 0
    assert all(float(row["test/elbo"]) < 0 for row in rows)
    report = written["html"].read_text()
    assert report.count("<img") >= 4


@pytest.mark.parametrize("key", list(SIZES))
def test_the_panels_tensorboard_and_wandb_show_the_images_in_their_colours(folder_sweep, key):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    mode, size = SIZES[key]
    job = folder_sweep[1][key]
    (panel,) = (job / "images" / "reconstructions").glob("*.png")
    assert_panel(opened(panel), mode, size)
    events = EventAccumulator(str(job / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    (logged,) = events.Images("images/reconstructions")
    assert_panel(opened(logged.encoded_image_string), mode, size)
    (wandb_run,) = [read_offline_run(p) for p in find_offline_runs(job)]
    (media,) = [p for p in wandb_run.media_files() if "reconstructions" in str(p)]
    assert_panel(opened(media), mode, size)


def test_vaelab_sample_draws_the_folder_models(folder_sweep, tmp_path):
    job = folder_sweep[1]["3,64"]
    ckpt = job / "checkpoints" / "last.ckpt"
    env = child_env()
    for kind, args, shape in [
        ("samples", ["n=6", "nrow=3"], (2 + 3 * 66, 2 + 2 * 66)),
        ("traversals", ["n=2", "steps=4"], (2 + 4 * 66, 2 + 2 * 66)),
        ("scatter", ["scatter_images=10"], (500, 500)),
    ]:
        out = tmp_path / f"{kind}.png"
        result = vaelab_cli("sample", f"ckpt={ckpt}", f"kind={kind}", *args, f"out={out}", timeout=120, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        assert opened(out).size == shape and opened(out).mode == "RGB", kind
