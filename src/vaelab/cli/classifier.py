"""``vaelab-classifier``: train (or reuse) the CNN that judges generated images
(``vaelab.results.image_classifier``) and cache it at ``<log_dir>/classifiers/<data>.pt``.

    vaelab-classifier data=mnist            # or: python -m vaelab.classifier data=fashion_mnist
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from vaelab.cli import CONFIG_DIR, VERSION_BASE, run_hydra_app
from vaelab.command_configs import validate_classifier_config
from vaelab.errors import one_line_errors


@hydra.main(**VERSION_BASE, config_path=str(CONFIG_DIR), config_name="classifier")
def app(cfg: DictConfig) -> float:
    with one_line_errors():
        validate_classifier_config(cfg)
        from vaelab.results.image_classifier import load_classifier, save_classifier, train_classifier

        path = Path(cfg.out)
        if path.is_file() and not cfg.retrain:
            model, test_accuracy = load_classifier(path)
            print(f"{cfg.data.name} classifier (cached at {path}): test accuracy {test_accuracy:.4f}")
            return test_accuracy
        model, test_accuracy = train_classifier(
            cfg.data.name, cfg.data.root, cfg.epochs, seed=cfg.seed, download=cfg.data.download
        )
        save_classifier(model, test_accuracy, cfg.data.name, path)
        print(f"{cfg.data.name} classifier saved to {path}: test accuracy {test_accuracy:.4f}")
        return test_accuracy


def main() -> None:
    """``vaelab-classifier``: Hydra's command line, its errors as one line."""
    run_hydra_app(app)


if __name__ == "__main__":
    main()
