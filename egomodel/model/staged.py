"""What every trainable network shares: named blocks for the stage configs, and frozen blocks whose
BatchNorm stays in eval whatever ``train()`` is called with (mmaction2's habit)."""

from __future__ import annotations

import abc

from torch import nn


class StagedModel(nn.Module, metaclass=abc.ABCMeta):
    """A network trained in stages. Subclasses name their blocks and the batch keys they read."""

    input_keys: tuple[str, ...] = ("frames",)  # batch entries passed to forward(), in order

    def __init__(self) -> None:
        super().__init__()
        self._frozen: list[nn.Module] = []

    def blocks(self) -> dict[str, list[nn.Parameter]]:
        """Parameters of each named block (the vocabulary of ``train.<stage>.trainable``): by
        default every parameter of the block's modules."""
        return {name: [p for m in mods for p in m.parameters()] for name, mods in self.block_modules().items()}

    @abc.abstractmethod
    def block_modules(self) -> dict[str, list[nn.Module]]:
        """Modules of each named block: the ones kept in eval when the block is frozen."""

    def set_frozen_modules(self, modules: list[nn.Module]) -> None:
        self._frozen = modules
        self.train(self.training)

    def train(self, mode: bool = True) -> StagedModel:
        """Frozen blocks (and their BN statistics) stay in eval whatever the mode."""
        super().train(mode)
        for m in self._frozen:
            m.eval()
        return self
