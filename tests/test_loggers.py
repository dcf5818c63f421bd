"""Loggers: what a resumed run keeps of the interrupted run's CSV metrics."""

from vaelab.loggers import csv_rows_before


def test_csv_rows_before_keeps_the_steps_before_the_checkpoint(tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,step,train/loss,val/elbo\n0,0,9.0,\n0,49,8.0,\n0,49,,-7.5\n1,99,6.0,\n1,149,5.0,\n")
    header, rows = csv_rows_before(metrics, step=99)  # the checkpoint was saved at global step 99
    assert header == ["epoch", "step", "train/loss", "val/elbo"]
    assert [(r["step"], r["train/loss"], r["val/elbo"]) for r in rows] == [("0", "9.0", ""), ("49", "8.0", ""), ("49", "", "-7.5")]


def test_csv_rows_before_without_a_file(tmp_path):
    assert csv_rows_before(tmp_path / "metrics.csv", step=10) == ([], [])
