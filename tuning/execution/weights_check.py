"""Whether every node has the backbone weights the search's trials will load, checked before any trial.

The weights a search needs follow from its base configuration and what it searches: ``model.pretrained``
(``imagenet``: torch hub's file of each backbone ``model.backbone`` can take; a path: that file; ``none``:
nothing). A zero-CPU task on each node alive now checks them (:func:`egomodel.model.imagenet.check_weights`:
present, and for ImageNet's files a SHA-256 that matches the file name); the search is refused with
every failing node named and the command that fixes it. Nodes an autoscaler launches later are checked by
each trial before it trains (:func:`check_in_trial`).
"""

from __future__ import annotations

from typing import Any

from egomodel.model.backbone import WeightsError
from egomodel.model.imagenet import check_weights, file_name
from tuning.execution.nodes import on_every_node, this_node

Need = tuple[str, str, str | None]  # (backbone, model.pretrained, torch hub's file name for imagenet)


class WeightsCheckError(RuntimeError):
    pass


def _values(cfg_value: Any, space: Any, key: str) -> set[Any]:
    """A config key's value in the base config, and every value the space can give it."""
    found = {cfg_value}
    for p in space.params:
        if p.key == key:
            found.update(p.choices)
    found.update(point[key] for point in space.points if key in point)
    return found


def needed(cfg: Any, space: Any) -> list[Need]:
    """The weight files the search's trials can load (``cfg``: the base egomodel config)."""
    backbones = sorted(_values(cfg.model.backbone, space, "model.backbone"))
    needs: list[Need] = []
    for pretrained in sorted(_values(cfg.model.pretrained, space, "model.pretrained")):
        if pretrained == "imagenet":
            needs += [(b, pretrained, file_name(b)) for b in backbones]
        elif pretrained != "none":
            needs.append((backbones[0], pretrained, None))  # a path: any backbone's check looks for the file
    return needs


def problems_here(needs: list[Need]) -> str | None:
    found = [p for b, pretrained, name in needs if (p := check_weights(b, pretrained, name))]
    return "; ".join(found) or None


def check_every_node(needs: list[Need], timeout_s: float = 120.0) -> int:
    """Check ``needs`` on every alive node; the number of nodes. Raises :class:`WeightsCheckError` naming
    each node that lacks them."""
    count, problems = on_every_node(problems_here, needs, timeout_s=timeout_s)
    if problems:
        raise WeightsCheckError(f"backbone weights missing or damaged on {len(problems)} of {count} nodes, "
                                "before any trial: " + " | ".join(map(str, problems)))
    return count


def describe(needs: list[Need]) -> str:
    return ", ".join(f"{b} ImageNet ({name})" if name else f"model.pretrained={p}" for b, p, name in needs)


def check(cfg: Any, space: Any, remote: bool) -> str:
    """Check the weights the search needs: on every node of a cluster (``remote``), else on this machine
    (the local Ray's workers run here). What was checked, for the search's output."""
    needs = needed(cfg, space)
    if not needs:
        return "backbone weights: none needed (model.pretrained=none)"
    if remote:
        nodes = check_every_node(needs)
        return f"backbone weights {describe(needs)}: present and intact on all {nodes} node{'s' * (nodes != 1)}"
    problem = problems_here(needs)
    if problem:
        raise WeightsCheckError(f"on this machine, before any trial: {problem}")
    return f"backbone weights {describe(needs)}: present and intact on this machine"


def check_in_trial(backbone: str, pretrained: str) -> None:
    """In a trial, before it trains: fail at once on a node without the weights (a node launched after the
    search's check), naming the node."""
    problem = check_weights(backbone, pretrained)
    if problem:
        raise WeightsError(f"node {this_node()}: {problem}")
