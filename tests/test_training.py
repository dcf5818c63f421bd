"""Training end to end: one step of every variant, checkpoints, and a real offline W&B run."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import FAST, child_env, compose, train_cli
from hydra.utils import instantiate

from vaelab.module import VAELitModule
from vaelab.results.wandb_offline import find_offline_runs, read_offline_run
from vaelab.training import train

VARIANTS = [
    ["model=vae"],
    ["model=beta_vae"],
    ["model=cvae"],
    ["model=beta_vae_capacity"],
    ["model=vae", "model/net=conv"],
    ["model=cvae", "model/net=conv", "data=fashion_mnist"],
    ["likelihood=gaussian"],
    ["likelihood=gaussian", "likelihood.learn_sigma=true"],
    ["annealing=linear"],
    ["annealing=cyclical"],
    ["annealing=sigmoid"],
    ["model.free_bits=0.5"],
    ["likelihood=ar_bernoulli"],
    ["likelihood=ar_bernoulli", "model/net=conv", "model=cvae"],
    ["model=iwae"],
    ["model=iwae", "model.dreg=true", "annealing=linear"],
    ["model=iwae", "model.conditional=true", "model/net=conv", "likelihood=ar_bernoulli"],
]


def build(overrides, tmp_path, data_root):
    cfg = compose([*FAST, *overrides], output_dir=tmp_path, data_root=data_root)
    datamodule = instantiate(cfg.data)
    module = VAELitModule.from_config(cfg, datamodule)
    return cfg, datamodule, module


@pytest.mark.parametrize("overrides", VARIANTS, ids=[" ".join(v) for v in VARIANTS])
def test_one_training_step_updates_every_parameter(overrides, tmp_path, data_root):
    import lightning as L

    cfg, datamodule, module = build(overrides, tmp_path, data_root)
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    trainer = L.Trainer(
        fast_dev_run=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=datamodule)
    metrics = trainer.callback_metrics
    assert {"train/loss", "train/recon", "train/kl", "train/elbo", "val/elbo"} <= set(metrics)
    assert all(torch.isfinite(v) for v in metrics.values())
    torch.testing.assert_close(metrics["val/elbo"], -(metrics["val/recon"] + metrics["val/kl"]))
    if module.objective.importance_samples > 1:  # the k-sample bound, logged beside the ELBO
        assert {"train/iwae", "val/iwae"} <= set(metrics)
    unchanged = [name for name, p in module.named_parameters() if torch.equal(p, before[name])]
    assert unchanged == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the NVML probe stays on")
def test_training_steps_do_not_probe_nvml_without_a_gpu(monkeypatch, tmp_path, data_root):
    import lightning as L

    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # as `import lightning` sets it
    probes = []
    nvml_count = torch.cuda._device_count_nvml
    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: probes.append(1) or nvml_count())
    probes_at_start = []
    when_training_starts = L.Callback()
    when_training_starts.on_train_start = lambda *_: probes_at_start.append(len(probes))
    _, datamodule, module = build([], tmp_path, data_root)
    trainer = L.Trainer(
        max_steps=12,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=[when_training_starts],
    )
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 12
    assert probes_at_start[0] >= 1  # the trainer's set-up asked NVML (Lightning's flag was on)
    assert len(probes) == probes_at_start[0]  # and none of the 12 Adam steps did


def test_training_lowers_the_loss(tmp_path, data_root):
    metrics = train(
        compose(
            [*FAST, "trainer.max_epochs=3", "logger=csv", "callbacks=none", "test=false"],
            output_dir=tmp_path,
            data_root=data_root,
        )
    ).metrics
    rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    val = [float(r.split(",")[header.index("val/elbo")]) for r in rows[1:] if r.split(",")[header.index("val/elbo")]]
    assert len(val) == 3 and val[-1] > val[0] + 20  # the ELBO rises by many nats on the synthetic blocks
    assert metrics["val/elbo"] == pytest.approx(val[-1])


def test_a_callback_set_to_null_is_off(tmp_path, data_root):
    train(
        compose(
            [*FAST, "logger=csv", "callbacks.image_panels=null", "callbacks.nan_guard=null", "test=false"],
            output_dir=tmp_path,
            data_root=data_root,
        )
    )
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()  # the other callbacks still run
    assert not (tmp_path / "images").exists()  # no image panels


LR_MONITOR = "callbacks.lr_monitor.enabled=true"


def logged_column(run_dir, key: str) -> list[float]:
    """The values of one metrics.csv column, in row order, empty cells left out."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        return [float(row[key]) for row in csv.DictReader(handle) if row.get(key)]


HALVE_LR_EVERY_EPOCH = (
    "model.lr_scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:1,gamma:0.5}"
)


def test_lr_schedule_steps_every_epoch_and_survives_a_resume(tmp_path, data_root):
    args = [*FAST, "logger=csv", "callbacks.image_panels=null", "test=false", LR_MONITOR, HALVE_LR_EVERY_EPOCH]
    train(compose([*args, "trainer.max_epochs=2"], output_dir=tmp_path, data_root=data_root))
    train(compose([*args, "trainer.max_epochs=4", f"resume={tmp_path}"], output_dir=tmp_path, data_root=data_root))
    # LearningRateMonitor logs once at each epoch's start; epochs 2 and 3 come after the resume
    assert logged_column(tmp_path, "train/lr") == pytest.approx([1e-3 * 0.5**epoch for epoch in range(4)])


def test_lr_schedule_per_step(tmp_path, data_root):
    per_step = HALVE_LR_EVERY_EPOCH.replace("}", ",interval:step}")
    train(
        compose(
            [*FAST, "logger=csv", "callbacks.image_panels=null", "test=false", "trainer.limit_train_batches=3"]
            + [LR_MONITOR, per_step],
            output_dir=tmp_path,
            data_root=data_root,
        )
    )
    assert logged_column(tmp_path, "train/lr") == pytest.approx([1e-3, 5e-4, 2.5e-4])


def test_lr_monitor_without_a_scheduler_logs_lightnings_name(tmp_path, data_root):
    args = [*FAST, "logger=csv", "callbacks.image_panels=null", "test=false", "trainer.limit_train_batches=3"]
    train(compose([*args, LR_MONITOR, "model.optimizer.lr=3e-4"], output_dir=tmp_path, data_root=data_root))
    lr = logged_column(tmp_path, "lr-Adam")  # at the epoch's start and on each of the 3 logging steps
    assert len(lr) >= 3 and lr == pytest.approx([3e-4] * len(lr))
    train(compose(args, output_dir=tmp_path / "off", data_root=data_root))
    assert "lr" not in (tmp_path / "off" / "csv" / "metrics.csv").read_text().splitlines()[0]  # off by default


def test_same_seed_same_metrics(tmp_path, data_root):
    def run(name):
        metrics = train(
            compose([*FAST, "logger=none", "callbacks=none", "seed=7"], output_dir=tmp_path / name, data_root=data_root)
        ).metrics
        return {k: v for k, v in metrics.items() if not k.startswith("time/")}  # wall time differs, of course

    first = run("a")
    assert "test/elbo" in first and first == run("b")


def test_checkpoint_round_trip(tmp_path, data_root):
    cfg = compose([*FAST, "model=cvae", "logger=none", "model.latent_dim=3"], output_dir=tmp_path, data_root=data_root)
    train(cfg)
    checkpoints = tmp_path / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    assert [p.name for p in checkpoints.glob("best-*.ckpt")] == ["best-epoch-000.ckpt"]
    loaded = VAELitModule.from_checkpoint(checkpoints / "last.ckpt")
    state = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert loaded.vae.conditional and loaded.vae.latent_dim == 3
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    z, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 3])
    again = VAELitModule.from_checkpoint(checkpoints / "last.ckpt")
    torch.testing.assert_close(loaded.generate(z, labels), again.generate(z, labels))


def run_cli(args, tmp_path, env_extra=None, timeout=300):
    env = child_env()
    del env["WANDB_MODE"]  # as a user without W&B set up has it
    env.update({"HOME": str(tmp_path / "home"), "NETRC": str(tmp_path / "no-netrc"), **(env_extra or {})})
    env.pop("WANDB_API_KEY", None)
    return train_cli(*args, timeout=timeout, env=env)


def test_cli_logs_an_offline_wandb_run_without_credentials(tmp_path, data_root):
    run_dir = tmp_path / "run"
    result = run_cli(
        [
            *FAST,
            "trainer.max_epochs=2",
            "model=cvae",
            "model.latent_dim=2",
            f"data.root={data_root}",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    notices = [line for line in (result.stdout + result.stderr).splitlines() if "no credentials found" in line]
    assert len(notices) == 1 and "offline" in notices[0]

    runs = find_offline_runs(run_dir)
    assert len(runs) == 1
    run = read_offline_run(runs[0])
    assert run.name == "cvae-mnist-z2-b1.0-s0" and run.group == "mnist-cvae"
    assert {"cvae", "mnist", "beta=1.0", "z=2"} <= set(run.tags)
    expected = {f"{stage}/{name}" for stage in ("train", "val", "test") for name in ("recon", "kl", "elbo", "loss")}
    assert expected | {"train/beta"} <= run.history_keys
    assert run.config["model"]["name"] == "cvae" and run.config["data"]["name"] == "mnist"
    assert run.config["model"]["latent_dim"] == 2 and run.config["trainer"]["max_epochs"] == 2
    images = [p.name for p in run.media_files()]
    for panel in ("reconstructions", "samples", "class_samples", "traversals", "interpolations", "latent_scatter"):
        assert sum(name.startswith(panel + "_") for name in images) == 2, images  # one per epoch
        assert len(list((run_dir / "images" / panel).glob("epoch=*.png"))) == 2
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert run.summary["test/elbo"] == pytest.approx(-(run.summary["test/recon"] + run.summary["test/kl"]), rel=1e-5)
    # the final metrics in the summary, for W&B's run table and parallel coordinates
    assert run.summary["val/active_units"] >= 0 and run.summary["epochs"] == 2 and run.summary["time/fit_seconds"] > 0
    assert run.summary["best_checkpoint"].endswith(".ckpt") and "best-epoch-" in run.summary["best_checkpoint"]
    assert run.summary["val/elbo"] == {"max": max(row["val/elbo"] for row in run.history if "val/elbo" in row)}
    # metric definitions: the best val/elbo, and every curve against Lightning's global step
    assert "max" in run.metrics["val/elbo"]["summary"]
    assert run.metrics["*"]["step_metric"] == "trainer/global_step"
    # the per-dimension KL table: one row per latent dimension
    table = [row for row in run.history if "final/kl_per_dim/path" in row]  # W&B flattens the table's reference
    assert len(table) == 1 and table[0]["final/kl_per_dim/_type"] == "table-file"
    table_file = runs[0] / "files" / table[0]["final/kl_per_dim/path"]
    content = json.loads(table_file.read_text())
    assert content["columns"] == ["dim", "kl_nats", "mean_variance", "active"] and len(content["data"]) == 2
    assert content["data"][0][1] == pytest.approx(run.summary["val/kl_dim/00"], rel=1e-4)
    # the best and the last checkpoint as two versions of the run's model artifact, staged for wandb sync
    models = [artifact for artifact in run.artifacts if artifact["type"] == "model"]
    assert [a["name"] for a in models] == [f"model-{run.run_id}"] * 2
    best, last = models  # W&B moves "latest" to each new version: the last one keeps it
    assert "best" in best["aliases"] and {"last", "latest"} <= set(last["aliases"]) and "best" not in last["aliases"]
    assert best["metadata"]["file"] == Path(run.summary["best_checkpoint"]).name and best["metadata"]["score"] < 0
    assert last["metadata"]["file"] == "last.ckpt" and last["metadata"]["epoch"] == 2
    for artifact in models:
        staged = Path(artifact["files"]["model.ckpt"])
        original = run_dir / "checkpoints" / artifact["metadata"]["file"]
        assert staged.is_file() and staged != original and staged.read_bytes() == original.read_bytes()


def test_manifold_panel_for_two_latents(tmp_path, data_root):
    from PIL import Image

    train(
        compose(
            [*FAST, "logger=none", "model.latent_dim=2", "callbacks.image_panels.manifold_steps=5", "test=false"],
            output_dir=tmp_path,
            data_root=data_root,
        )
    )
    manifold = Image.open(tmp_path / "images" / "manifold" / "epoch=000.png")
    assert manifold.size == (5 * 28, 5 * 28)
    recon = Image.open(tmp_path / "images" / "reconstructions" / "epoch=000.png")
    assert recon.size == (2 + 16 * 30, 2 + 2 * 30)  # 16 inputs above 16 reconstructions, 2-pixel padding


@pytest.mark.slow  # 50 batches of the real data sets: about 22 s each
@pytest.mark.realdata
@pytest.mark.parametrize("args", [["model=beta_vae", "model.beta=4"], ["model=cvae", "data=fashion_mnist"]])
def test_readme_commands_on_real_data(args, tmp_path, real_data_root):
    run_dir = tmp_path / "run"
    result = run_cli(
        [
            *args,
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=50",
            f"data.root={real_data_root}",
            f"hydra.run.dir={run_dir}",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = read_offline_run(find_offline_runs(run_dir)[0])
    assert run.summary["test/elbo"] < 0 and run.summary["test/kl"] > 0
    assert run.config["model"]["beta"] == (4 if "model.beta=4" in args else 1.0)
    if "model=cvae" in args:
        assert any(p.name.startswith("class_samples_") for p in run.media_files())


def test_missing_data_is_one_clear_line_and_a_non_zero_exit(tmp_path):
    empty = tmp_path / "empty"
    result = run_cli(
        ["logger=none", "data.download=false", f"data.root={empty}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert str(empty / "MNIST" / "raw") in errors[0] and "VAELAB_DATA_DIR" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model.beta=-1"], "error: model.beta=-1.0 is not allowed"),
        (["annealing=linear", "annealing.warmup_steps=0"], "error: annealing.warmup_steps must be >= 1"),
    ],
)
def test_bad_config_is_one_line_and_a_non_zero_exit(args, message, tmp_path, data_root):
    result = run_cli([*args, "logger=none", f"data.root={data_root}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        line for line in result.stderr.splitlines() if message in line
    ]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bf16_mixed_precision_trains_with_float32_sums(tmp_path, data_root):
    metrics = train(
        compose(
            [*FAST, "logger=none", "callbacks=none", "trainer.precision=bf16-mixed"],
            output_dir=tmp_path,
            data_root=data_root,
        )
    ).metrics
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["test/elbo"] == pytest.approx(-(metrics["test/recon"] + metrics["test/kl"]), rel=1e-5)


@pytest.mark.slow
def test_compiled_model_trains_and_loads(tmp_path, data_root):
    metrics = train(
        compose([*FAST, "logger=none", "compile=true", "test=false"], output_dir=tmp_path, data_root=data_root)
    ).metrics
    assert math.isfinite(metrics["val/elbo"])
    loaded = VAELitModule.from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert not any("_orig_mod" in name for name in loaded.state_dict())
