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
    # the API's functions, imported on first use (vaelab.cli.* are the commands)
    if name in ("train", "load", "evaluate"):
        from vaelab import api

        return getattr(api, name)
    raise AttributeError(f"module 'vaelab' has no attribute {name!r}")
