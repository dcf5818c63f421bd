"""vaelab: VAE, beta-VAE and conditional VAE on MNIST and Fashion-MNIST with Lightning, Hydra and W&B.

The Python API (see ``vaelab.api``)::

    import vaelab
    result = vaelab.train(["model=beta_vae", "model.beta=4"])   # the command line's overrides
    model = vaelab.load(result.last_checkpoint)                 # read as data (weights_only)
    images = model.sample(16)                                   # (16, 1, 28, 28) in [0, 1]
    scores = vaelab.evaluate(result.best_checkpoint, k=1000)    # the vaelab-eval results

Kept import-light on purpose: ``vaelab-train --help`` and ``--cfg`` must not import torch, so
the API is imported on first use.
"""

from vaelab.version import __version__

__all__ = ["train", "load", "evaluate", "__version__"]


def __getattr__(name: str):
    # vaelab.train and vaelab.evaluate are their (callable) modules; see vaelab/train.py
    if name in ("train", "evaluate"):
        import importlib

        return importlib.import_module(f"vaelab.{name}")
    if name == "load":
        from vaelab.api import load

        return load
    raise AttributeError(f"module 'vaelab' has no attribute {name!r}")
