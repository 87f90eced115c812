"""Hyperparameter search over egomodel: YAML search spaces, Ray Tune + Optuna, MLflow records."""
