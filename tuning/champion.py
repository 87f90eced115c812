"""Moved to :mod:`tuning.tracking.champion`. This name stays because champion models registered before the
move pickled ``tuning.champion.EgoRNNModel`` (their ``python_model.pkl``): MLflow finds it here."""

from tuning.tracking.champion import EgoRNNModel

__all__ = ["EgoRNNModel"]
