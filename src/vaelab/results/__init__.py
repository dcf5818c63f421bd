"""What runs produced, measured and shown: nothing here trains.

- ``evaluation``: a checkpoint's ELBO, importance-sampled NLL, diagnostics, OOD AUROC, CVAE
  accuracy and FID (``vaelab-eval``);
- ``image_classifier``: the small CNN that judges generated images, and its FID features;
- ``run_reader``: run folders read as data (config, status, curves), and their Pareto front;
- ``plots``: the plots of ``vaelab-compare``;
- ``comparison``: ``vaelab-compare`` itself: the runs table, the plots and the report of a set of runs;
- ``report``: the self-contained ``report.html``;
- ``tables``: the final-metric names and the one CSV and Markdown table writer;
- ``wandb_offline``: W&B's offline run files read back with no network.
"""
