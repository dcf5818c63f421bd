"""Loggers: what a resumed run keeps of the interrupted run's CSV metrics; the private APIs behind one function each."""

from pathlib import Path
from types import SimpleNamespace

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

    from vaelab.inner_steps import advance_logging_step
    from vaelab.loggers import restore_csv_rows
    from vaelab.module import lightning_logs_this_step
    from vaelab.profiling import skip_undefined_hooks
    from vaelab.results.wandb_offline import record_class

    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    assert lightning_logs_this_step(trainer) in (True, False)
    advance_logging_step(trainer, 3)  # counts optimizer steps under steps_per_fetch
    assert trainer.fit_loop.epoch_loop._batches_that_stepped == 3
    writer = CSVLogger(tmp_path).experiment
    restore_csv_rows(writer, ["step", "train/loss"], [{"step": 0, "train/loss": 1.5}])
    assert writer.metrics_keys == ["step", "train/loss"]
    assert Path(writer.metrics_file_path).read_text().splitlines() == ["step,train/loss", "0,1.5"]
    assert record_class()().WhichOneof("record_type") is None
    from lightning.pytorch.trainer import call

    skip_undefined_hooks()
    assert call._call_callback_hooks.vaelab_skips_undefined

    class Moved:  # what an upgrade that renames the attribute looks like
        _logger_connector = object()
        fast_dev_run = False

    with pytest.raises(RuntimeError, match="has no trainer._logger_connector.should_update_logs"):
        lightning_logs_this_step(Moved())
    Moved.fit_loop = SimpleNamespace(epoch_loop=object())
    with pytest.raises(RuntimeError, match="has no fit_loop.epoch_loop._batches_that_stepped"):
        advance_logging_step(Moved(), 1)
    with pytest.raises(RuntimeError, match="has no trainer.call._call_callback_hooks"):
        skip_undefined_hooks(SimpleNamespace(_call_callback_hooks=lambda: None))
    writer.metrics_keys = None
    with pytest.raises(RuntimeError, match="has no metrics_keys list"):
        restore_csv_rows(writer, ["step"], [])


def test_the_anonymous_argument_lightning_passes_to_wandb_is_dropped(tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    from vaelab.workarounds import quiet_wandb_logger

    logger = WandbLogger(project="x", save_dir=str(tmp_path), offline=True)
    assert "anonymous" in logger._wandb_init  # what W&B warns about: if this goes, so can quiet_wandb_logger
    quiet_wandb_logger(logger)
    assert "anonymous" not in logger._wandb_init and logger._wandb_init["project"] == "x"


def test_tensorboard_holds_the_curves_the_panels_and_the_hparams_with_final_metrics(tmp_path, data_root):
    pytest.importorskip("tensorboard", reason="pip install 'vaelab[tensorboard]'")
    from helpers import FAST, compose
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from vaelab.training import train

    overrides = [
        *FAST,
        "logger=tensorboard",
        "trainer.max_epochs=2",
        "model.beta=2",
        "model.latent_dim=3",
        "callbacks.image_panels.scatter_images=40",
    ]
    metrics = train(compose(overrides, output_dir=tmp_path, data_root=data_root)).metrics
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    assert {"train/loss", "train/elbo", "val/elbo", "val/kl", "test/elbo", "final/test/elbo"} <= scalars
    assert {"images/reconstructions", "images/samples", "images/traversals", "images/latent_scatter"} <= images
    assert len(events.Images("images/samples")) == 2  # one per epoch
    assert events.Scalars("final/test/elbo")[-1].value == pytest.approx(metrics["test/elbo"], rel=1e-6)
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model.beta"].number_value == 2.0 and start.hparams["model.latent_dim"].number_value == 3
    assert start.hparams["likelihood._target_"].string_value == "BernoulliLikelihood"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {"final/test/elbo", "final/val/active_units"} <= {m.name.tag for m in experiment.metric_infos}
    from vaelab.results.comparison import read_run  # vaelab-compare reads the TensorBoard run's curves

    run = read_run(tmp_path)
    assert run.curve_source == "tensorboard" and run.beta == 2.0
    assert [row["epoch"] for row in run.history if "val/elbo" in row] == [0, 1]


def service_threads():
    import threading

    return [thread for thread in threading.enumerate() if thread.name == "wandb-service"]


def test_the_wandb_service_starts_in_the_background_before_the_run(tmp_path, data_root):
    import wandb
    from helpers import FAST, compose
    from wandb.sdk import wandb_setup

    from vaelab.wandb_run import start_wandb_service

    wandb.teardown()  # a service an earlier test of this process started
    start_wandb_service(compose([*FAST, "logger=wandb"], output_dir=tmp_path, data_root=data_root))
    [thread] = service_threads()
    thread.join(timeout=60)
    try:
        assert not thread.is_alive()
        wandb_setup.singleton().assert_service()  # raises AssertionError when no service runs
        run = wandb.init(dir=tmp_path, project="service", mode="offline")  # finds it running
        run.finish()
        assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    finally:
        wandb.teardown()


def test_wandb_starts_no_run_while_its_service_is_being_started(monkeypatch, tmp_path, data_root):
    """W&B's set-up had no lock before 0.18: a run started beside it could leave a second service."""
    import time

    from helpers import FAST, compose

    import vaelab.wandb_run
    from vaelab.wandb_run import prepare_wandb, start_wandb_service

    ended = []

    def slow_setup(wandb) -> None:
        time.sleep(0.5)
        ended.append(wandb)

    monkeypatch.setattr(vaelab.wandb_run, "setup_or_leave_it_to_init", slow_setup)
    start_wandb_service(compose([*FAST, "logger=wandb"], output_dir=tmp_path, data_root=data_root))
    assert not ended  # started in the background
    wandb = prepare_wandb()  # what every wandb.init of vaelab's runs after
    assert ended == [wandb] and service_threads() == []


@pytest.mark.parametrize("logger, rank", [("csv", None), ("wandb", "1")])
def test_no_wandb_service_without_a_wandb_logger_or_off_rank_zero(logger, rank, monkeypatch, tmp_path, data_root):
    from helpers import FAST, compose

    from vaelab.wandb_run import start_wandb_service

    if rank is not None:
        monkeypatch.setenv("LOCAL_RANK", rank)
    start_wandb_service(compose([*FAST, f"logger={logger}"], output_dir=tmp_path, data_root=data_root))
    assert service_threads() == []


def log_a_run(wandb, folder, steps: int):
    run = wandb.init(dir=folder, project="written", mode="offline")
    for step in range(steps):
        run.log({"loss": 1.0 / (step + 1), "note": f"step {step:06d}"})
    run.summary.update({"world_size": 2})
    return Path(run.settings.sync_file)


def test_a_run_file_ends_with_its_exit_record_at_every_cut(tmp_path):
    """``ends_with_exit`` reads the last two 32 KiB blocks only; it agrees with a full parse at
    every record boundary of a three-block run file, and a cut inside the exit record is not ended."""
    import wandb

    from vaelab.results.wandb_offline import BLOCK_SIZE, HEADER, ends_with_exit, payloads_from, record_class
    from vaelab.wandb_run import finish_wandb

    run_file = log_a_run(wandb, tmp_path, steps=800)
    finish_wandb()
    data = run_file.read_bytes()
    assert len(data) > 2 * BLOCK_SIZE  # the tail read starts past the header
    Record = record_class()  # noqa: N806 - a class

    def kind(payload: bytes) -> str:
        record = Record()
        record.ParseFromString(payload)
        return record.WhichOneof("record_type")

    cuts, offset = [], len(HEADER)  # the end of every chunk: where a writer may have stopped
    while offset + 7 <= len(data):
        if BLOCK_SIZE - offset % BLOCK_SIZE < 7:
            offset += BLOCK_SIZE - offset % BLOCK_SIZE
            continue
        offset += 7 + int.from_bytes(data[offset + 4 : offset + 6], "little")
        cuts.append(offset)
    assert cuts[-1] == len(data) and len(cuts) > 800
    cut_file = tmp_path / "cut.wandb"
    for cut in [*cuts[::7], *cuts[-3:], len(data) - 1]:
        cut_file.write_bytes(data[:cut])
        kinds = [kind(payload) for payload in payloads_from(data[:cut], len(HEADER))]
        assert ends_with_exit(cut_file) == (kinds[-1] == "exit"), cut
    assert ends_with_exit(run_file) and not ends_with_exit(cut_file)  # the last cut ends inside the exit record


def test_finish_returns_once_the_run_file_holds_the_whole_run(monkeypatch, tmp_path):
    """W&B's service writes a run's last records when it handles the finish message, after
    ``wandb.finish()`` returns. Here the message is sent 1 s late: ``finish_wandb`` still returns
    with the final summary and the exit record in the file."""
    import threading
    import time

    import wandb
    from wandb.sdk.lib.service.service_connection import ServiceConnection

    from vaelab.results.wandb_offline import ends_with_exit, read_offline_run
    from vaelab.wandb_run import finish_wandb

    inform_finish = ServiceConnection.inform_finish
    sent = []

    def late(self, run_id: str) -> None:
        def send():
            time.sleep(1.0)
            inform_finish(self, run_id)
            sent.append(time.monotonic())

        threading.Thread(target=send).start()

    monkeypatch.setattr(ServiceConnection, "inform_finish", late)
    run_file = log_a_run(wandb, tmp_path, steps=20)
    finish_wandb()
    returned = time.monotonic()
    assert read_offline_run(run_file.parent).summary.get("world_size") == 2
    assert ends_with_exit(run_file)
    assert sent and sent[0] <= returned  # it waited for the late message
