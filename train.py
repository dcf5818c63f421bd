"""Train a VAE, beta-VAE or CVAE: ``python train.py model=beta_vae model.beta=4``.

A thin wrapper around ``vaelab.cli.train.main`` (also installed as ``vaelab-train``).
"""

from vaelab.cli.train import main

if __name__ == "__main__":
    main()
