"""vaelab as a package: the wheel with its configs, the Python API, --help, checkpoint records."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import CONFIG_DIR, FAST, PROJECT_ROOT, child_env, compose, vaelab_cli, write_synthetic_dataset

import vaelab
from vaelab.errors import ConfigError
from vaelab.safe_load import CheckpointError

SMALL = [*FAST, "trainer.enable_model_summary=false", "callbacks.image_panels.scatter_images=60"]


def test_wheel_installs_and_trains_from_an_empty_folder(tmp_path):
    # build from a copy, so that nothing (build/, *.egg-info) is written into the source tree
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(PROJECT_ROOT / name, source / name)
    shutil.copytree(PROJECT_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("vaelab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    yaml_files = {f"vaelab/configs/{p.relative_to(CONFIG_DIR).as_posix()}" for p in CONFIG_DIR.rglob("*.yaml")}
    assert len(yaml_files) > 40 and yaml_files <= names, sorted(yaml_files - names)
    assert any(n.endswith("licenses/LICENSE") for n in names)

    target = tmp_path / "target"
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    # a Python whose site-packages are this environment's, without its editable install of src/:
    # a .pth line adds a folder to the path but does not run that folder's own .pth files
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (venv_site,) = venv.glob("lib/python*/site-packages")
    (venv_site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = str(venv / "bin" / "python")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = child_env(PYTHONPATH=str(target), VAELAB_DATA_DIR=str(write_synthetic_dataset(tmp_path / "data", "mnist")))
    probe = "import sys, vaelab.cli; print(vaelab.cli.CONFIG_DIR); print('\\n'.join(sys.path))"
    where = subprocess.run([python, "-c", probe], cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    config_dir, *path = where.stdout.splitlines()
    assert Path(config_dir) == target / "vaelab" / "configs"
    assert not any(Path(p).resolve() == (PROJECT_ROOT / "src").resolve() for p in path if p)

    run = subprocess.run(
        [
            python,
            "-m",
            "vaelab.train",
            "debug=fast",
            "logger=csv",
            "data.val_size=40",
            "trainer.enable_progress_bar=false",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (run_dir,) = (workdir / "logs" / "runs").iterdir()
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "ok"
    record = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["vaelab"]
    assert record["commit"] is None  # an installed wheel is not a git checkout
    assert record["config"]["paths"]["log_dir"] == str(workdir / "logs")
    assert not list(target.rglob("logs")) and not (workdir / "data").exists()


@pytest.fixture(scope="module")
def api_runs(tmp_path_factory):
    """Two runs by vaelab.train in this process, W&B offline: a VAE and a CVAE."""
    import matplotlib

    root = tmp_path_factory.mktemp("api")
    data_root = write_synthetic_dataset(root / "data", "mnist")
    backend = matplotlib.get_backend()
    matplotlib.use("pdf")  # a backend vaelab must leave alone (panels, compare plots)
    try:
        common = [*SMALL, "logger=wandb", f"data.root={data_root}", f"paths.log_dir={root / 'logs'}"]
        vae = vaelab.train([*common, "model.latent_dim=2"])
        cvae = vaelab.train([*common, "model=cvae", "model.latent_dim=3"])
        from vaelab.results.comparison import compare

        compare([root / "logs" / "runs"], root / "compare")
        yield vae, cvae, data_root, matplotlib.get_backend()
    finally:
        matplotlib.use(backend)


def offline_run_ids(run_dir: Path) -> set[str]:
    return {p.stem.removeprefix("run-") for p in run_dir.glob("wandb/offline-run-*/run-*.wandb")}


def test_train_twice_in_one_process_gives_two_runs(api_runs):
    vae, cvae, _, _ = api_runs
    assert vae.run_dir != cvae.run_dir and vae.run_dir.parent == cvae.run_dir.parent
    for result in (vae, cvae):
        assert (result.run_dir / ".hydra" / "config.yaml").is_file()
        assert json.loads((result.run_dir / "status.json").read_text())["status"] == "ok"
        assert (
            result.best_checkpoint.is_file() and result.last_checkpoint == result.run_dir / "checkpoints" / "last.ckpt"
        )
        assert result.metrics["test/elbo"] < 0
    ids = [offline_run_ids(r.run_dir) for r in (vae, cvae)]
    assert all(len(i) == 1 for i in ids) and ids[0] != ids[1]
    # the checkpoint says what it is: version, commit, seed, W&B run id, the composed config
    record = torch.load(vae.last_checkpoint, weights_only=True)["vaelab"]
    assert record["version"] == vaelab.__version__ and record["seed"] == 0
    assert record["wandb_run_id"] in ids[0]
    assert record["config"]["model"]["latent_dim"] == 2 and record["config"]["paths"]["output_dir"] == str(vae.run_dir)
    if (PROJECT_ROOT / ".git").exists():
        assert len(record["commit"].removesuffix("+dirty")) == 40


def test_library_code_leaves_the_matplotlib_backend_alone(api_runs):
    assert api_runs[3] == "pdf"
    assert (api_runs[0].run_dir / "images" / "latent_scatter").is_dir()


def test_load_sample_encode_reconstruct(api_runs):
    vae, cvae, _, _ = api_runs
    model = vaelab.load(vae.last_checkpoint)
    images = model.sample(16, seed=3)
    assert images.shape == (16, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    torch.testing.assert_close(images, model.sample(16, seed=3))
    x = torch.rand(5, 1, 28, 28)
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (5, 2)
    x_hat = model.reconstruct(x)
    assert x_hat.shape == (5, 1, 28, 28) and 0 <= x_hat.min() and x_hat.max() <= 1
    conditional = vaelab.load(cvae.last_checkpoint)
    sevens = conditional.sample(6, label=7, seed=1)
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sevens, conditional.generate(z, torch.full((6,), 7)))
    with pytest.raises(ValueError, match="conditional VAE: give the class labels"):
        conditional.encode(x)
    assert conditional.reconstruct(x, torch.arange(5)).shape == (5, 1, 28, 28)
    with pytest.raises(ValueError, match="label=7 needs a conditional VAE"):
        model.sample(2, label=7)


def test_evaluate_agrees_with_vaelab_eval(api_runs, tmp_path):
    vae, _, data_root, _ = api_runs
    scores = vaelab.evaluate(vae.best_checkpoint, k=20, limit_images=30, data_root=str(data_root), generation=False)
    out = tmp_path / "eval.json"
    cli = vaelab_cli(
        "evaluate",
        f"ckpt={vae.best_checkpoint}",
        "k=20",
        "limit_images=30",
        f"data_root={data_root}",
        "generation=false",
        "wandb=false",
        f"out={out}",
        timeout=300,
        cwd=tmp_path,
    )
    assert cli.returncode == 0, cli.stderr
    written = json.loads(out.read_text())
    for key in ("test/nll", "test/elbo", "test/recon", "test/kl", "test/active_units", "test/mutual_info"):
        assert scores[key] == pytest.approx(written[key], rel=1e-9), key
    # the description vaelab-eval logs first names the version, commit, seed and W&B run id
    record = torch.load(vae.best_checkpoint, weights_only=True)["vaelab"]
    assert f"seed 0, W&B run id {record['wandb_run_id']}" in cli.stdout + cli.stderr
    with pytest.raises(ConfigError, match="kk: not a vaelab.evaluate setting"):
        vaelab.evaluate(vae.best_checkpoint, kk=3)


def test_a_checkpoint_from_another_version(api_runs, tmp_path):
    vae, _, _, _ = api_runs
    checkpoint = torch.load(vae.last_checkpoint, weights_only=True)
    checkpoint["vaelab"]["version"] = "0.0.1"
    torch.save(checkpoint, tmp_path / "old.ckpt")
    assert vaelab.load(tmp_path / "old.ckpt").sample(2).shape == (2, 1, 28, 28)  # loads as long as it fits
    checkpoint["vaelab"]["version"] = "9.0.0"
    checkpoint["hyper_parameters"]["model"]["net"]["encoder"]["a_future_setting"] = 1
    torch.save(checkpoint, tmp_path / "new.ckpt")
    with pytest.raises(CheckpointError, match=r"written by vaelab 9\.0\.0, this is vaelab") as error:
        vaelab.load(tmp_path / "new.ckpt")
    assert "\n" not in str(error.value)


def test_api_errors_are_exceptions_and_leave_no_folder(tmp_path):
    with pytest.raises(ConfigError, match="model.latent_dim"):
        vaelab.train([f"paths.log_dir={tmp_path}", "model.latent_dim=0"])
    with pytest.raises(ConfigError, match="no_such_key"):
        vaelab.train([f"paths.log_dir={tmp_path}", "no_such_key=1"])
    assert not list(tmp_path.glob("runs/*"))  # no run folder left behind


SCRIPTS = {
    "vaelab-train": ["model:", "data:", "trainer:", "experiment:", "Examples:", "./logs/runs"],
    "vaelab-eval": ["ckpt:", "k:", "split:", "Examples:"],
    "vaelab-sample": ["ckpt:", "kind:", "label:", "Examples:"],
    "vaelab-classifier": ["data:", "epochs:", "Examples:"],
    "vaelab-compare": ["paths", "--out"],
}


def test_every_console_script_has_a_help():
    scripts = Path(sys.executable).parent
    processes = {
        name: subprocess.Popen(
            [str(scripts / name), "--help"],
            cwd=PROJECT_ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in SCRIPTS
    }
    for name, process in processes.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, (name, err)
        missing = [word for word in SCRIPTS[name] if word not in out]
        assert not missing, (name, missing, out)
        assert name in out.splitlines()[0], out[:200]


def test_a_config_folder_of_ones_own(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: beta_vae\nmodel:\n  beta: 3\n  latent_dim: 5\n"
    )
    result = vaelab_cli(
        "train",
        "--config-dir",
        str(tmp_path),
        "experiment=mine",
        "--cfg",
        "job",
        timeout=60,
        cwd=tmp_path,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    assert "name: beta_vae" in result.stdout and "beta: 3" in result.stdout and "latent_dim: 5" in result.stdout


def test_resume_from_python_continues_the_run(tmp_path):
    data_root = write_synthetic_dataset(tmp_path / "data", "mnist")
    common = [
        *SMALL,
        "logger=csv",
        "callbacks.image_panels=null",
        f"data.root={data_root}",
        f"paths.log_dir={tmp_path}",
    ]
    first = vaelab.train([*common, "model=beta_vae", "model.beta=4"])
    resumed = vaelab.train([f"resume={first.run_dir}", "trainer.max_epochs=2"])
    assert resumed.run_dir == first.run_dir
    checkpoint = torch.load(resumed.last_checkpoint, weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["hyper_parameters"]["model"]["beta"] == 4
    assert checkpoint["vaelab"]["config"]["paths"]["output_dir"] == str(first.run_dir)


def test_the_train_function_outside_hydra_says_what_to_do(tmp_path, data_root):
    from vaelab.training import train

    cfg = compose([*SMALL, "logger=none"], data_root=data_root)
    with pytest.raises(Exception, match=r"paths.output_dir is not set and no Hydra app is running"):
        train(cfg)
