"""Moved to :mod:`tuning.space.sampling`. This name stays because searches saved before the move pickled
``tuning.sampling.DefineByRun`` into Ray's searcher state and ``tuner.pkl``: ``--resume`` finds it here."""

from tuning.space.sampling import DefineByRun

__all__ = ["DefineByRun"]
