"""vaelab-eval on a checkpoint trained inside the test: JSON, stdout, W&B summary, bad checkpoints."""

import json

import pytest
import torch
from helpers import FAST, PROJECT_ROOT, child_env, compose, vaelab_cli
from omegaconf import OmegaConf

from vaelab.module import VAELitModule
from vaelab.results.evaluation import evaluate_split
from vaelab.results.wandb_offline import find_offline_runs, read_offline_run
from vaelab.training import train


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_root):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = compose([*FAST, "trainer.max_epochs=2", "model.latent_dim=4"], output_dir=run_dir, data_root=data_root)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    train(cfg)
    return run_dir


def run_eval(args, cwd=PROJECT_ROOT):
    env = child_env()
    return vaelab_cli("evaluate", *args, timeout=300, cwd=cwd, env=env)


def test_eval_writes_json_stdout_and_wandb_summary(trained_run, data_root):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    result = run_eval([f"ckpt={ckpt}", "k=64", f"data_root={data_root}"])
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((trained_run / "checkpoints" / "last.eval.json").read_text())
    assert saved["test/n_images"] == 60 and saved["test/k"] == 64 and saved["binarize"] == "dynamic"
    assert saved["test/nll"] < -saved["test/elbo"]  # the k = 64 bound is tighter than the ELBO
    assert saved["test/bits_per_dim"] == pytest.approx(saved["test/nll"] / (784 * 0.6931471805599453))
    assert 0 <= saved["test/active_units"] <= 4 and len(saved["test/kl_per_dim"]) == 4
    assert sum(saved["test/kl_per_dim"]) == pytest.approx(saved["test/kl"], rel=1e-4)
    assert f'"test/nll": {saved["test/nll"]}' in result.stdout
    runs = [read_offline_run(p) for p in find_offline_runs(trained_run)]
    assert len({r.run_id for r in runs}) == 1 and len(runs) == 2  # the training run, resumed by id
    assert runs[-1].summary["test/nll"] == pytest.approx(saved["test/nll"])


def test_best_checkpoint_path_is_a_valid_override(trained_run, data_root):
    """The best checkpoint's file name has no '=', which Hydra's override grammar would refuse."""
    (best,) = (trained_run / "checkpoints").glob("best-*.ckpt")
    result = run_eval([f"ckpt={best}", "k=2", "generation=false", f"data_root={data_root}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(best.with_suffix(".eval.json").read_text())["test/k"] == 2


def test_same_seed_same_numbers(trained_run, data_root):
    module = VAELitModule.from_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    images = torch.rand(10, 1, 28, 28).round()
    labels = torch.zeros(10, dtype=torch.long)
    torch.manual_seed(0)
    first = evaluate_split(module, images, labels, k=32, batch_images=3)
    torch.manual_seed(0)
    second = evaluate_split(module, images, labels, k=32, batch_images=3)
    first.pop("seconds"), second.pop("seconds")
    assert first == second


def test_long_pass_reports_progress(trained_run, caplog):
    """A progress line after every batch when progress_seconds=0, none after the last one."""
    module = VAELitModule.from_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    images = torch.rand(10, 1, 28, 28).round()
    with caplog.at_level("INFO", logger="vaelab.results.evaluation"):
        results = evaluate_split(
            module, images, torch.zeros(10, dtype=torch.long), k=8, batch_images=3, progress_seconds=0
        )
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("NLL at k=8")]
    assert [line.split(":")[1].split(",")[0].strip() for line in lines] == [
        "3 of 10 images",
        "6 of 10 images",
        "9 of 10 images",
    ]
    so_far = [float(line.rsplit("so far ", 1)[1].split()[0]) for line in lines]
    assert all(abs(value - results["nll"]) < 0.5 * abs(results["nll"]) for value in so_far)
