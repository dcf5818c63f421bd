"""vaelab from Python: the same configs, run folders and checkpoints as the command line.

    import vaelab
    result = vaelab.train(["model=beta_vae", "model.beta=4", "trainer.max_epochs=2"])
    result.metrics["test/elbo"], result.run_dir, result.best_checkpoint
    model = vaelab.load(result.last_checkpoint)   # read as data (weights_only), as vaelab-eval does
    images = model.sample(16)                     # (16, 1, 28, 28) in [0, 1]
    scores = vaelab.evaluate(result.best_checkpoint, k=1000)

No Hydra app is needed (a Jupyter kernel, ``python -c``): the configs are composed with Hydra's
compose API and each run gets its own folder, ``.hydra/config.yaml`` included, so that
``vaelab-compare`` and ``resume=`` see it. Errors are raised (``vaelab.errors.UserError`` and its
``ConfigError``), never turned into an exit.

Imports only hydra and omegaconf until a function is called.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, open_dict

from vaelab.cli import CONFIG_DIR, VERSION_BASE, hydra_message
from vaelab.compat import upgrade_overrides
from vaelab.errors import ConfigError


def compose(config_name: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """A packaged config (``train``, ``eval``, ``sample``, ``classifier``) composed with
    command-line style ``overrides``, with its ``hydra`` node; a bad override is a ConfigError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(overrides, str):
        raise ConfigError(f"overrides={overrides!r}: give a list of strings, e.g. [{overrides!r}]")
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), **VERSION_BASE):
            return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(hydra_message(error)) from None


def without_hydra(cfg: DictConfig, output_dir: Path) -> DictConfig:
    """The job's config as Hydra hands it to an app: no ``hydra`` node, ``paths.output_dir`` set."""
    with open_dict(cfg):
        del cfg["hydra"]
        if "paths" in cfg:
            cfg.paths.output_dir = str(output_dir)
    return cfg


def tensor_overrides(data, labels) -> list[str]:
    """The data overrides for images handed over from Python (``vaelab.tensor_data``), which
    the user's own overrides, given after them, may change (e.g. ``data.binarize=dynamic``)."""
    from vaelab.tensor_data import register

    key, summary = register(data, labels)
    return [
        "data.source=tensors",
        "data.name=tensors",
        f"data.tensor_key={key}",
        f"data.tensor_summary='{summary}'",
        "data.val_size=null",
        "data.binarize=none",
    ]


def train(overrides: list[str] | tuple[str, ...] = (), data=None, labels=None):
    """Train one run with the command line's overrides, e.g. ``["model=beta_vae", "model.beta=4"]``.

    The run goes to ``./logs/runs/<time>_<run_name>/`` (``paths.log_dir=...``, ``hydra.run.dir=...``
    move it; ``resume=RUN_DIR`` continues a run). Returns a ``vaelab.training.TrainResult``: ``metrics``
    (floats, nats per image), ``run_dir``, ``best_checkpoint``, ``last_checkpoint``.

    ``data``: your own images instead of the ``data`` config's: a tensor or NumPy array (N, C, H, W)
    or (N, H, W), uint8 or float in [0, 1], or a ``torch.utils.data.Dataset`` of images or (image,
    label) pairs; ``labels``: (N,) class numbers (else those of the Dataset, else one class). A
    seeded tenth of them is the test set and a tenth of the rest the validation set."""
    from vaelab.runs import check_can_create, check_folder_contents
    from vaelab.training import run_in_folder

    overrides = upgrade_overrides(list(overrides))
    if data is not None:
        overrides = [*tensor_overrides(data, labels), *overrides]
    if any(o.startswith(("hparams_search=", "hydra/sweeper", "hydra/launcher")) for o in overrides):
        raise ConfigError("vaelab.train runs one job: sweep with the command line (vaelab-train -m ...)")
    cfg = compose("train", overrides)
    run_dir = Path(cfg.hydra.run.dir).absolute()
    check_can_create(run_dir, "run folder")
    check_folder_contents(run_dir, "run folder")
    return run_in_folder(without_hydra(cfg, run_dir), run_dir, overrides)


def load(checkpoint: str | Path, device: str = "cpu"):
    """The model in a vaelab checkpoint, in eval mode on ``device``: a ``VAELitModule`` with
    ``sample(n, label=None, seed=None)``, ``encode(x, y=None)``, ``reconstruct(x, y=None)`` and
    ``generate(z, y=None)``. The file is read as data (weights_only, every ``_target_`` allow-listed)."""
    from vaelab.module import VAELitModule

    return VAELitModule.from_checkpoint(checkpoint, device, key="checkpoint")


def evaluate(checkpoint: str | Path, k: int = 5000, split: str = "test", data=None, labels=None, **settings) -> dict:
    """The ``vaelab-eval`` results of a checkpoint as a dict (``<split>/nll``, ``<split>/elbo``, ...,
    nats per image), computed without writing a file or a W&B summary. ``settings`` are vaelab-eval's
    other keys, e.g. ``limit_images=1000``, ``data_root=...``, ``generation=False``, ``device="cpu"``.
    ``data``/``labels``: the images a run trained with ``vaelab.train(data=...)`` was given, again."""
    from vaelab.command_configs import validate_eval_config
    from vaelab.results.evaluation import evaluate_checkpoint
    from vaelab.tensor_data import register

    if data is not None:
        register(data, labels)  # found by its key, the one the checkpoint recorded

    cfg = without_hydra(compose("eval"), Path.cwd())
    for key, value in {"ckpt": str(checkpoint), "k": k, "split": split, **settings}.items():
        if key not in cfg.keys() or key in ("paths", "out", "scan", "wandb"):
            raise ConfigError(f"{key}: not a vaelab.evaluate setting (see vaelab-eval --help)")
        cfg[key] = value
    validate_eval_config(cfg)
    return evaluate_checkpoint(cfg)
