"""vaelab-compare on a tiny 2 x 2 sweep (beta in {1, 4}, latent_dim in {2, 3}) made here with the CSV logger."""

import base64
import csv
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers import FAST, train_cli, vaelab_cli
from PIL import Image

from vaelab.results.comparison import compare


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, data_root):
    sweep_dir = tmp_path_factory.mktemp("sweep")
    result = train_cli(
        "-m",
        "model.beta=1,4",
        "model.latent_dim=2,3",
        *FAST,
        "trainer.max_epochs=2",
        "logger=csv",
        "callbacks.image_panels.every_n_epochs=2",  # the panels once, after the last epoch
        "callbacks.image_panels.scatter_images=40",
        f"data.root={data_root}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def test_table_plots_and_report(sweep_dir, tmp_path):
    out = tmp_path / "compare"
    written = compare([sweep_dir], out)
    with open(written["csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((float(r["beta"]), int(r["latent_dim"])) for r in rows) == [(1, 2), (1, 3), (4, 2), (4, 3)]
    for row in rows:
        assert row["status"] == "ok" and row["data"] == "mnist"
        # the plain ELBO is -(recon + KL) on the same (test) images
        assert float(row["test/elbo"]) == pytest.approx(-(float(row["test/recon"]) + float(row["test/kl"])), rel=1e-4)
        assert float(row["time/fit_seconds"]) > 0
    # a larger beta buys a smaller KL at the same latent size
    kl = {(float(r["beta"]), int(r["latent_dim"])): float(r["test/kl"]) for r in rows}
    assert kl[(4, 2)] < kl[(1, 2)] and kl[(4, 3)] < kl[(1, 3)]
    markdown = written["md"].read_text().splitlines()
    assert len(markdown) == 2 + 4 and "test/elbo" in markdown[0]

    for name, (width, height) in {
        "rate_distortion": (660, 495),
        "metrics_vs_latent": (1430, 440),
        "curves": (1430, 495),
    }.items():
        image = Image.open(written[name]).convert("L")
        assert image.size == (width, height)
        dark = sum(1 for p in image.getdata() if p < 200) / (width * height)
        assert dark > 0.01, f"{name} looks empty"


class RunsTable(HTMLParser):
    """The cells of report.html's runs table: per row, (text, data-value or None) of each cell."""

    def __init__(self):
        super().__init__()
        self.head, self.rows, self.inside, self.cell = [], [], False, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id") == "runs":
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell = ["", attrs.get("data-value"), attrs.get("data-column")]

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[0] += data

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif self.cell is not None and tag in ("td", "th"):
            self.rows[-1].append(tuple(self.cell))
            self.cell = None


def test_report_holds_the_table_of_runs_csv_and_every_runs_pictures(sweep_dir, tmp_path):
    written = compare([sweep_dir], tmp_path / "compare")
    page = written["html"].read_text()
    assert "http://" not in page and "https://" not in page and "<script src" not in page  # no network
    with open(written["csv"], newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    parser = RunsTable()
    parser.feed(page)
    head, rows = parser.rows[0], parser.rows[1:]
    assert [column for _, _, column in head] == ["label", *csv_rows[0]]
    assert len(rows) == len(csv_rows) == 4
    for row, expected in zip(rows, csv_rows, strict=True):  # same runs, same order, same values
        cells = dict(zip(["label", *expected], row, strict=True))
        beta, latent_dim = float(expected["beta"]), int(expected["latent_dim"])
        assert cells["label"][0] == f"β={beta:g} z={latent_dim} vae s0"
        assert cells["run"][0] == Path(expected["run"]).name
        for column, value in expected.items():
            text, number, _ = cells[column]
            if number is not None:
                assert float(number) == pytest.approx(float(value), rel=1e-12), column
            elif column != "run":
                assert text == value, column
    gallery = page.split('id="gallery"', 1)[1]
    for folder in sorted(p for p in sweep_dir.iterdir() if (p / "images").is_dir()):
        for panel in ("samples", "reconstructions", "traversals"):
            final = sorted((folder / "images" / panel).glob("epoch=*.png"))[-1]
            assert final.name == "epoch=001.png"
            assert base64.b64encode(final.read_bytes()).decode() in gallery, (folder.name, panel)
    # rows of the gallery by beta, columns by latent size
    assert gallery.index("β = 1</th>") < gallery.index("β = 4</th>") and gallery.index("z = 2") < gallery.index("z = 3")
    assert len(re.findall(r'data-run="[^"]+" data-panel="samples"', gallery)) == 4


def test_curves_come_from_the_csv_logger(sweep_dir):
    from vaelab.results.comparison import find_run_folders, read_run

    runs = [read_run(folder) for folder in find_run_folders([sweep_dir])]
    assert len(runs) == 4
    for run in runs:
        assert run.curve_source == "csv"
        val = [row["val/elbo"] for row in run.history if "val/elbo" in row]
        assert len(val) == 2  # one per epoch
        assert run.metrics["val/elbo"] == pytest.approx(val[-1], rel=1e-5)


def test_cli_and_errors(sweep_dir, tmp_path):
    result = vaelab_cli("compare", str(sweep_dir), "--out", str(tmp_path / "c"), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("compared 4 runs") and (tmp_path / "c" / "report.html").is_file()
    empty = vaelab_cli("compare", str(tmp_path / "c"), timeout=120)
    assert empty.returncode == 1 and empty.stderr.strip().startswith("error: no run folders")
    assert not (tmp_path / "c" / "compare").exists()  # nothing written on error


def test_nll_from_vaelab_eval_joins_the_table(sweep_dir, data_root, tmp_path):
    job = sorted(p for p in sweep_dir.iterdir() if p.name.startswith("0_"))[0]
    result = vaelab_cli(
        "evaluate",
        f"ckpt={job}/checkpoints/last.ckpt",
        "k=16",
        "generation=false",
        "wandb=false",
        f"data_root={data_root}",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with open(compare([sweep_dir], tmp_path / "c")["csv"]) as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle)}
    evaluated = float(rows[str(job)]["test/nll"])
    assert 0 < evaluated < -float(rows[str(job)]["test/elbo"]) * 1.05  # about the ELBO, tighter on average
    assert all(row["test/nll"] == "" for name, row in rows.items() if name != str(job))


def test_damaged_run_folders_are_skipped_with_a_warning_naming_them(sweep_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "sweep"
    shutil.copytree(sweep_dir, copy)
    jobs = sorted(p for p in copy.iterdir() if (p / ".hydra").is_dir())
    status = jobs[0] / "status.json"
    status.write_text(status.read_text()[:20])  # truncated
    (jobs[1] / ".hydra" / "config.yaml").write_text("")  # empty
    (jobs[2] / "csv" / "metrics.csv").write_bytes(b"\xff\xfe\x00bad")  # not UTF-8
    written = compare([copy], tmp_path / "out")
    with open(written["csv"]) as handle:
        assert [row["run"] for row in csv.DictReader(handle)] == [str(jobs[3])]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3 and all(str(job) in line for job, line in zip(jobs, warnings, strict=False))


def test_a_resumed_wandb_run_is_read_as_one_run(tmp_path, data_root):
    from helpers import compose

    from vaelab.results.comparison import read_run
    from vaelab.runs import save_run_config
    from vaelab.training import train

    run_dir = tmp_path / "run"
    for epochs in (1, 2):
        cfg = compose(
            [
                *FAST,
                f"trainer.max_epochs={epochs}",
                "test=false",
                "callbacks.image_panels.every_n_epochs=5",
                *([f"resume={run_dir}"] if epochs == 2 else []),
            ],
            output_dir=run_dir,
            data_root=data_root,
        )
        train(cfg)
    save_run_config(run_dir, cfg, [])
    run = read_run(run_dir)
    steps = sorted({int(row["step"]) for row in run.history if "train/elbo" in row})
    assert run.curve_source == "wandb" and steps[0] < 7 <= steps[-1]  # both segments (7 steps an epoch)
    assert len(steps) == len(set(steps)) and sorted(row["epoch"] for row in run.history if "val/elbo" in row) == [0, 1]
