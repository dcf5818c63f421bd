"""Loggers: what a resumed run keeps of the interrupted run's CSV metrics; the private APIs behind one function each."""

from pathlib import Path

import pytest

from vaelab.loggers import csv_rows_before


def test_csv_rows_before_keeps_the_steps_before_the_checkpoint(tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,step,train/loss,val/elbo\n0,0,9.0,\n0,49,8.0,\n0,49,,-7.5\n1,99,6.0,\n1,149,5.0,\n")
    header, rows = csv_rows_before(metrics, step=99)  # the checkpoint was saved at global step 99
    assert header == ["epoch", "step", "train/loss", "val/elbo"]
    assert [(r["step"], r["train/loss"], r["val/elbo"]) for r in rows] == [
        ("0", "9.0", ""),
        ("49", "8.0", ""),
        ("49", "", "-7.5"),
    ]


def test_csv_rows_before_without_a_file(tmp_path):
    assert csv_rows_before(tmp_path / "metrics.csv", step=10) == ([], [])


def test_the_private_apis_vaelab_relies_on_are_there(tmp_path):
    """Each private attribute vaelab uses is reached through one function, which says what changed."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from vaelab.loggers import restore_csv_rows
    from vaelab.module import lightning_logs_this_step
    from vaelab.wandb_run import record_class

    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    assert lightning_logs_this_step(trainer) in (True, False)
    writer = CSVLogger(tmp_path).experiment
    restore_csv_rows(writer, ["step", "train/loss"], [{"step": 0, "train/loss": 1.5}])
    assert writer.metrics_keys == ["step", "train/loss"]
    assert Path(writer.metrics_file_path).read_text().splitlines() == ["step,train/loss", "0,1.5"]
    assert record_class()().WhichOneof("record_type") is None

    class Moved:  # what an upgrade that renames the attribute looks like
        _logger_connector = object()
        fast_dev_run = False

    with pytest.raises(RuntimeError, match="has no trainer._logger_connector.should_update_logs"):
        lightning_logs_this_step(Moved())
    writer.metrics_keys = None
    with pytest.raises(RuntimeError, match="has no metrics_keys list"):
        restore_csv_rows(writer, ["step"], [])
