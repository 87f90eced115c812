"""Moved to :mod:`tuning.execution.searcher`. This name stays because searches saved before the move pickled
``tuning.searcher.PruneAwareOptunaSearch`` into ``tuner.pkl``: ``--resume`` finds it here."""

from tuning.execution.searcher import PruneAwareOptunaSearch

__all__ = ["PruneAwareOptunaSearch"]
