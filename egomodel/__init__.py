"""Motion-imprinted egocentric action recognition (GTEA61) in plain PyTorch: ``data/`` (the GTEA61
layout, datasets, a synthetic set), ``model/`` (one file per block), ``training/`` (the three-stage
engine), ``reporting/`` (confusion matrices and pictures), and the commands ``train``, ``evaluate``,
``visualize``. It never imports Ray, Optuna or MLflow (docs/design.md)."""
