import math
from types import SimpleNamespace

import pytest
import torch
from helpers import FAST, compose
from hydra.utils import instantiate

from vaelab.callbacks import CollapseMonitor
from vaelab.panels import prior_quantile_grid
from vaelab.training import train


def fake_trainer(**metrics):
    return SimpleNamespace(
        sanity_checking=False,
        current_epoch=3,
        callback_metrics={k.replace("__", "/"): torch.tensor(v) for k, v in metrics.items()},
    )


def test_monitor_flags_non_finite_terms_collapse_and_explosion():
    monitor = CollapseMonitor(min_kl=0.1, max_kl=500)
    monitor.on_validation_end(fake_trainer(train__loss=float("nan"), val__kl=2.0, val__active_units=3.0), None)
    assert monitor.warnings == ["epoch 3: train/loss is nan (not finite)"]
    monitor.warnings.clear()
    monitor.on_validation_end(fake_trainer(val__kl=0.01, val__active_units=0.0), None)
    assert monitor.warnings == ["epoch 3: posterior collapse: val/kl = 0.010 nats, 0 active units"]
    monitor.warnings.clear()
    monitor.on_validation_end(fake_trainer(val__kl=900.0, val__active_units=5.0), None)
    assert monitor.warnings == ["epoch 3: the KL explodes: val/kl = 900.0 nats > 500"]
    monitor.warnings.clear()
    monitor.on_validation_end(fake_trainer(val__kl=20.0, val__active_units=5.0, train__loss=100.0), None)
    assert monitor.warnings == []


def test_a_huge_beta_collapses_the_posterior_and_is_reported(tmp_path, data_root, caplog):
    cfg = compose(
        [*FAST, "trainer.max_epochs=3", "model.beta=500", "logger=none", "test=false"],
        output_dir=tmp_path,
        data_root=data_root,
    )
    with caplog.at_level("WARNING"):
        metrics = train(cfg).metrics
    assert metrics["val/active_units"] == 0.0 and metrics["val/kl"] < 0.1
    assert "posterior collapse" in caplog.text


def test_healthy_run_logs_diagnostics_without_warnings(tmp_path, data_root, caplog):
    cfg = compose(
        [*FAST, "trainer.max_epochs=2", "model.latent_dim=4", "logger=none", "test=false"],
        output_dir=tmp_path,
        data_root=data_root,
    )
    with caplog.at_level("WARNING"):
        metrics = train(cfg).metrics
    assert metrics["val/active_units"] >= 1
    assert -0.5 < metrics["val/mutual_info"] <= math.log(40) + 0.1  # at most log N for N = 40 images
    assert sum(metrics[f"val/kl_dim/{d:02d}"] for d in range(4)) == pytest.approx(metrics["val/kl"], rel=1e-4)
    assert "posterior collapse" not in caplog.text


def test_prior_quantile_grid_is_ordered():
    grid = prior_quantile_grid(5)
    assert grid.shape == (25, 2)
    assert torch.all(grid[:5, 0].diff() > 0) and torch.all(grid[::5, 1].diff() < 0)
    assert instantiate({"_target_": "vaelab.callbacks.CollapseMonitor"}).min_kl == 0.1


@pytest.mark.parametrize("log_every", [1, 3])
def test_throughput_logs_images_per_second_on_logging_steps(log_every, tmp_path, data_root):
    import csv

    cfg = compose(
        [
            *FAST,
            "logger=csv",
            "callbacks.image_panels=null",
            "trainer.limit_train_batches=6",
            f"trainer.log_every_n_steps={log_every}",
            "test=false",
        ],
        output_dir=tmp_path,
        data_root=data_root,
    )
    train(cfg)
    with open(tmp_path / "csv" / "metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/images_per_second")]
    assert len(rows) == 6 // log_every
    assert all(float(row["train/images_per_second"]) > 0 for row in rows)


def test_switched_on_early_stopping_stops(tmp_path, data_root):
    cfg = compose(
        [
            *FAST,
            "logger=none",
            "callbacks.early_stopping.enabled=true",
            "callbacks.early_stopping.patience=1",
            "callbacks.early_stopping.min_delta=1e9",
            "callbacks.image_panels=null",
            "trainer.max_epochs=5",
            "test=false",
        ],
        output_dir=tmp_path,
        data_root=data_root,
    )
    metrics = train(cfg).metrics  # no validation improves val/elbo by 1e9 nats: stops after 2 epochs
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert "val/elbo" in metrics


def test_callbacks_that_are_off_are_not_built(tmp_path):
    from vaelab.training import switched_on

    names = [name for name, _ in switched_on(compose([], output_dir=tmp_path).callbacks)]
    assert {"early_stopping", "lr_monitor", "rich_progress_bar"}.isdisjoint(names)
    assert {"progress_bar", "throughput"} <= set(names)  # on by default
    assert "throughput" not in dict(
        switched_on(compose(["callbacks.throughput.enabled=false"], output_dir=tmp_path).callbacks)
    )
    rich = compose(["callbacks.rich_progress_bar.enabled=true"], output_dir=tmp_path).callbacks
    chosen = dict(switched_on(rich))
    assert "progress_bar" not in chosen and "enabled" not in chosen["rich_progress_bar"]


def test_switched_on_rich_progress_bar_draws_richs_bar(tmp_path, data_root, capfd):
    pytest.importorskip("rich")
    overrides = [*FAST, "logger=none", "callbacks.image_panels=null", "test=false", "trainer.limit_train_batches=2"]
    train(compose([*overrides, "trainer.enable_progress_bar=true"], output_dir=tmp_path / "tqdm", data_root=data_root))
    tqdm_output = capfd.readouterr()
    cfg = compose(
        [*overrides, "trainer.enable_progress_bar=true", "callbacks.rich_progress_bar.enabled=true"],
        output_dir=tmp_path / "rich",
        data_root=data_root,
    )
    train(cfg)
    rich_output = capfd.readouterr()
    tqdm_text, rich_text = tqdm_output.out + tqdm_output.err, rich_output.out + rich_output.err
    assert "it/s]" in tqdm_text and "━" not in tqdm_text  # tqdm's bar
    assert "━" in rich_text and "it/s]" not in rich_text  # Rich's bar instead
