"""The names of the numbers vaelab logs, in one place. All are nats per image (a sum over pixels
or latent dimensions, a mean over images) unless the name says otherwise.

Each split (``train``, ``val``, ``test``) logs ``<split>/<term>`` for the ``TERMS`` its objective
computes; validation adds the ``DIAGNOSTICS`` (``vaelab.diagnostics``); vaelab-eval writes
``<split>/nll`` and ``<split>/bits_per_dim``.
"""

# the objective's terms: recon = -log p(x|z), kl, elbo = -(recon + kl) at beta = 1, loss = the
# weighted training objective, iwae = the k-sample bound (model.importance_samples > 1)
TERMS = ("recon", "kl", "elbo", "loss", "iwae")
DIAGNOSTICS = ("val/active_units", "val/mutual_info")  # a count of dimensions; nats
# a run's final metrics as tables, summaries and TensorBoard's HPARAMS tab show them
FINAL_METRICS = ("test/elbo", "test/recon", "test/kl", "val/elbo", "val/recon", "val/kl", *DIAGNOSTICS)
# logged only by runs trained on the IWAE bound: columns when a run has them
IWAE_METRICS = ("val/iwae", "test/iwae")
# the comparison table's other columns: vaelab-eval's importance-sampled NLL, the fit's wall time in seconds
TABLE_EXTRAS = ("test/nll", "time/fit_seconds")
# the W&B run summary keeps the best value of these (define_metric), not the last one
BEST_SUMMARIES = {"val/elbo": "max"}
