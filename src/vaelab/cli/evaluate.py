"""``vaelab-eval``: score a checkpoint (``vaelab.results.evaluation``), print the results, then write
them to a JSON file and to the run's W&B summary.

    vaelab-eval ckpt=logs/runs/<run>/checkpoints/last.ckpt k=5000
    python -m vaelab.evaluate ckpt=... split=test k=5000

The data split is the checkpoint's own data config (for dynamic binarization the split is
binarized once with a fixed seed, so numbers repeat). Results go to stdout, to
``<ckpt>.eval.json`` (or ``out=...``), and to the run's W&B summary when the run folder has one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from vaelab.cli import CONFIG_DIR, VERSION_BASE, run_hydra_app
from vaelab.command_configs import validate_eval_config
from vaelab.config import pick_device
from vaelab.errors import ConfigError, one_line_errors

log = logging.getLogger(__name__)


def results_path(cfg: DictConfig) -> Path:
    """Where the JSON results go, checked to be writable before anything is evaluated."""
    out = Path(cfg.out) if cfg.get("out") else Path(cfg.ckpt).with_suffix(".eval.json")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"out={out}: the folder {folder} does not exist")
    if out.is_dir() or not os.access(out if out.exists() else folder, os.W_OK):
        raise ConfigError(f"out={out}: cannot write there (set out= to a writable file path)")
    return out


def run(cfg: DictConfig) -> dict:
    """``vaelab-eval``: describe the checkpoint, evaluate it, print the results, then write them
    to the JSON file and the run's W&B summary."""
    from vaelab.runs import check_folder_contents, run_of_checkpoint, write_file
    from vaelab.safe_load import read_vaelab_checkpoint

    validate_eval_config(cfg)
    run_dir = run_of_checkpoint(cfg.ckpt)  # its W&B run gets the results; None for a file elsewhere
    if run_dir is not None:
        check_folder_contents(run_dir, "run folder")  # a run folder from elsewhere: W&B and out= write in it
    out = results_path(cfg)
    pick_device(str(cfg.device))  # a GPU asked for where there is none fails before the file is read
    checkpoint = read_vaelab_checkpoint(cfg.ckpt)
    # imported once the inputs have passed: Lightning takes seconds, and --help needs none of it
    from vaelab.checkpointing import describe
    from vaelab.results.evaluation import evaluate_checkpoint
    from vaelab.wandb_run import update_summary

    if cfg.get("scan"):
        print("\n".join(describe(checkpoint)))
        config = (checkpoint.get("vaelab") or {}).get("config")
        print("config:\n" + OmegaConf.to_yaml(config).rstrip() if config else "config: not recorded")
        return {}
    for line in describe(checkpoint):  # what the file holds, before anything is built from it
        log.info("ckpt: %s", line)
    results = evaluate_checkpoint(cfg, checkpoint)
    del checkpoint
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, list)}, indent=2))  # shown before any write
    write_file(out, json.dumps(results, indent=2) + "\n")
    log.info("wrote %s", out)
    if cfg.get("wandb", True):
        results["wandb_run_id"] = update_summary(run_dir.resolve(), results) if run_dir else None
    return results


@hydra.main(**VERSION_BASE, config_path=str(CONFIG_DIR), config_name="eval")
def app(cfg: DictConfig) -> None:
    with one_line_errors():
        run(cfg)


def main() -> None:
    """``vaelab-eval``: Hydra's command line, its errors as one line."""
    run_hydra_app(app)


if __name__ == "__main__":
    main()
