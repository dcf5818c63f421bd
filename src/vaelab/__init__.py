"""vaelab: VAE, beta-VAE and conditional VAE on MNIST and Fashion-MNIST with Lightning, Hydra and W&B.

Kept import-light on purpose: ``vaelab.train --help`` and ``--cfg`` must not import torch.
"""

__version__ = "0.1.0"
