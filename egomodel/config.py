"""Typed configuration: dataclasses loaded from YAML and dotted ``key=value`` overrides.

Every key is validated at load so that a typo or an out-of-range value fails before any data is
read, with a message that names the dotted key. ``tuning`` relies on :func:`flatten` and
:func:`known_keys` to check search spaces against this schema.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RGB_VARIANTS = ("convlstm", "attention", "ms", "feedback")  # Ego-RNN's RGB stream and the paper's rows
VARIANTS = RGB_VARIANTS + ("flow", "two_stream")  # + Ego-RNN's temporal-warp flow stream and the joint model
MS_TASKS = ("classification", "regression_mse", "regression_l1")
BACKBONES = ("resnet34", "resnet18")  # egomodel.model.backbone.BACKBONES builds them
INSERTION_POINTS = ("conv1", "layer1", "layer2", "layer3", "layer4")
BACKBONE_BLOCKS = ("conv1", "layer1", "layer2", "layer3", "layer4", "fc")
BLOCKS = BACKBONE_BLOCKS + ("convlstm", "classifier", "ms_head", "feedback", "flow_layer4")
OPTIMIZERS = ("adam", "sgd")
SCHEDULERS = ("multistep", "exponential")  # exponential: lr *= gamma every epoch (StepLR(1, gamma))
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
GATE_MODES = ("auto", "fused", "separate")  # ConvLSTM gate convolutions (egomodel.model.convlstm)


STAGE_NAMES = ("stage1", "stage2", "stage3", "flow", "two_stream")  # the StageConfig fields of TrainConfig


class ConfigError(ValueError):
    """A configuration value is unknown or out of range; the message names the dotted key."""


@dataclass
class DataConfig:
    root: str = "synthetic"  # a GTEA61 root, or "synthetic" for the cached built-in set
    test_users: list[str] = field(default_factory=lambda: ["S2"])
    val_users: list[str] = field(default_factory=list)  # empty: stratified val_fraction of train
    val_fraction: float = 0.2  # 0 with no val_users: train on all non-test users, keep last epochs
    frames: int = 7
    image_size: int = 224
    num_workers: int = 2
    mmap_reach: int = 5  # how far to look for the nearest existing motion map
    decoded_cache: int = 0  # decoded images kept in memory per loader process (0: decode every read)
    packed_cache: str = ""  # per-clip decoded frames on disk: "" off, "auto" ($EGOMODEL_CACHE/packed) or a folder
    # training clips held on the training device, augmented there (RGB variants): true, false, or auto (on CUDA
    # when the training split takes at most a quarter of the device's free memory)
    device_clips: bool | str = False
    flow_stack: int = 5  # flow variants: consecutive warp-flow x/y frames per input (2 * flow_stack channels)
    flow_segments: int = 5  # flow variants: stacks averaged at evaluation, evenly over the clip


@dataclass
class ModelConfig:
    variant: str = "feedback"
    backbone: str = "resnet34"  # the paper's; "resnet18": same widths, half the FLOPs and parameters
    pretrained: str = "imagenet"  # "imagenet" (torchvision cache), "none", or a .pth path
    hidden: int = 512
    dropout: float = 0.7
    ms_task: str = "classification"
    alpha: float = 1.0
    tau: float = 0.2
    insertion: str = "conv1"
    feedback_channels: int = 64
    fusion_dropout: float = 0.5  # two_stream: dropout before the joint linear layer
    flow_checkpoint: str = ""  # two_stream: a trained flow model ("" = from the stage store in a search)
    rgb_checkpoint: str = ""  # two_stream: a trained attention model ("" = from the stage store)


@dataclass
class StageConfig:
    epochs: int
    lr: float
    milestones: list[int]
    batch_size: int
    trainable: list[str]
    gamma: float = 0.1
    optimizer: str = "adam"  # adam (eps train.eps) or sgd (with momentum)
    weight_decay: float = 4e-5
    momentum: float = 0.9  # sgd only
    scheduler: str = "multistep"  # multistep (milestones x gamma) or exponential (x gamma every epoch)
    slow_blocks: list[str] = field(default_factory=list)  # trainable blocks that use slow_lr instead of lr
    slow_lr: float = 1e-4


def _stage(*args: Any, **kwargs: Any) -> Any:
    return field(default_factory=lambda: StageConfig(*args, **kwargs))


@dataclass
class TrainConfig:
    """Stages follow the paper's Table 1 and text (docs/design.md §5)."""

    seed: int = 0
    epochs_scale: float = 1.0  # scales every stage's epochs and milestones
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA and AVX-512-BF16/AMX CPUs, else fp32
    channels_last: bool = True  # NHWC convolutions: 2x faster stage-2 steps on the 2-core CPU here
    convlstm_gates: str = "auto"  # fused | separate | auto: the faster one measured on the device type
    compile: bool = False  # torch.compile the model's forward (nn.Module.compile; checkpoints unchanged)
    eps: float = 1e-4
    eval_batch_size: int = 8
    # recompute trainable BN layers' statistics over the training clips after each epoch, before validation
    # and checkpoints (a forward pass, ~1/3 of an epoch): for short runs from random weights
    precise_bn: bool = False
    stage1_views: int = 0  # stage-1 feature cache: augmentation draws cached per clip (0: off, fresh draws)
    stage1: StageConfig = _stage(300, 1e-3, [25, 75, 150], 32, ["convlstm", "classifier"])
    stage2: StageConfig = _stage(
        150, 1e-4, [25, 75], 32, ["convlstm", "classifier", "layer4", "fc", "ms_head"]
    )
    stage3: StageConfig = _stage(
        200,
        1e-4,
        [50, 100, 150],
        4,
        ["convlstm", "classifier", "fc", "feedback", "conv1", "layer4"],
    )
    # Ego-RNN's flow stream: SGD, 750 epochs, lr x0.5 at 150/300/500
    flow: StageConfig = _stage(
        750, 1e-2, [150, 300, 500], 32, ["conv1", "layer1", "layer2", "layer3", "layer4", "classifier"],
        gamma=0.5, optimizer="sgd", weight_decay=5e-4,
    )
    # Ego-RNN's two-stream model: joint classifier, RGB ConvLSTM/layer4/fc, flow layer4 at 1e-4
    two_stream: StageConfig = _stage(
        250, 1e-2, [], 32, ["classifier", "convlstm", "layer4", "fc", "flow_layer4"],
        gamma=0.99, optimizer="sgd", weight_decay=5e-4, scheduler="exponential", slow_blocks=["flow_layer4"],
    )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"alpha": 1}}`` -> ``{"model.alpha": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def known_keys() -> dict[str, Any]:
    """Every dotted key of the schema with its default value."""
    return flatten(Config().to_dict())


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if set(typing.get_args(tp)) == {bool, str}:  # true, false or a word (data.device_clips: auto)
        if isinstance(value, bool) or (isinstance(value, str) and value):
            return value
        raise ConfigError(f"{key}: expected true, false or a word, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - schema bug


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in values:
        if k not in names:
            raise ConfigError(f"unknown config key {prefix}{k!s} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        tp = hints[f.name]
        key = prefix + f.name
        if dataclasses.is_dataclass(tp):
            default = getattr(cls(), f.name)
            merged = {**dataclasses.asdict(default), **(values[f.name] or {})}
            kwargs[f.name] = _build(tp, merged, key + ".")
        else:
            kwargs[f.name] = _coerce(key, values[f.name], tp)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required stage field missing
        raise ConfigError(f"{prefix.rstrip('.')}: {e}") from None


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")


def validate(cfg: Config) -> Config:
    """Range and choice checks; raises :class:`ConfigError` naming the key."""
    m, d, t = cfg.model, cfg.data, cfg.train
    _check_choice("model.variant", m.variant, VARIANTS)
    _check_choice("model.backbone", m.backbone, BACKBONES)
    _check_choice("model.ms_task", m.ms_task, MS_TASKS)
    _check_choice("model.insertion", m.insertion, INSERTION_POINTS)
    _check_choice("train.device", t.device, DEVICES)
    _check_choice("train.precision", t.precision, PRECISIONS)
    _check_choice("train.convlstm_gates", t.convlstm_gates, GATE_MODES)
    if isinstance(d.device_clips, str) and d.device_clips != "auto":
        raise ConfigError(f"data.device_clips: {d.device_clips!r}; expected true, false or auto")
    if d.device_clips is True and m.variant not in RGB_VARIANTS:
        raise ConfigError(f"data.device_clips: the {m.variant} variant reads flow, which stays with the loader; "
                          f"only {', '.join(RGB_VARIANTS)} can hold their clips on the device")
    if not 0.0 <= m.tau <= 1.0:
        raise ConfigError(f"model.tau: {m.tau} is outside [0, 1]")
    if m.alpha < 0:
        raise ConfigError(f"model.alpha: {m.alpha} must be >= 0")
    for key, v in (("model.dropout", m.dropout), ("model.fusion_dropout", m.fusion_dropout)):
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"{key}: {v} is outside [0, 1)")
    for key, v in (("data.flow_stack", d.flow_stack), ("data.flow_segments", d.flow_segments)):
        if v < 1:
            raise ConfigError(f"{key}: {v} must be >= 1")
    for key, v in (("model.hidden", m.hidden), ("model.feedback_channels", m.feedback_channels),
                   ("data.frames", d.frames), ("train.eval_batch_size", t.eval_batch_size)):
        if v < 1:
            raise ConfigError(f"{key}: {v} must be >= 1")
    if d.image_size < 32 or d.image_size % 32:
        raise ConfigError(f"data.image_size: {d.image_size} must be a multiple of 32 (>= 32)")
    if not 0.0 <= d.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction: {d.val_fraction} is outside [0, 1)")
    if t.seed < 0:
        raise ConfigError(f"train.seed: {t.seed} must be >= 0")
    if t.stage1_views < 0:
        raise ConfigError(f"train.stage1_views: {t.stage1_views} must be >= 0")
    if d.num_workers < 0 or d.mmap_reach < 0 or d.decoded_cache < 0:
        raise ConfigError("data.num_workers, data.mmap_reach and data.decoded_cache must be >= 0")
    if not d.test_users:
        raise ConfigError("data.test_users: at least one test user is needed")
    if set(d.val_users) & set(d.test_users):
        raise ConfigError(f"data.val_users: {d.val_users} overlaps data.test_users {d.test_users}")
    if not t.epochs_scale > 0:
        raise ConfigError(f"train.epochs_scale: {t.epochs_scale} must be > 0")
    for name in STAGE_NAMES:
        s: StageConfig = getattr(t, name)
        key = f"train.{name}"
        for b in s.trainable:
            if b not in BLOCKS:
                raise ConfigError(f"{key}.trainable: unknown block {b!r} (known: {', '.join(BLOCKS)})")
        for b in s.slow_blocks:
            if b not in s.trainable:
                raise ConfigError(f"{key}.slow_blocks: {b!r} is not in {key}.trainable")
        _check_choice(f"{key}.optimizer", s.optimizer, OPTIMIZERS)
        _check_choice(f"{key}.scheduler", s.scheduler, SCHEDULERS)
        if s.weight_decay < 0 or s.momentum < 0 or not s.slow_lr > 0:
            raise ConfigError(f"{key}: weight_decay and momentum must be >= 0, slow_lr > 0")
        if s.epochs < 1 or s.batch_size < 1:
            raise ConfigError(f"{key}: epochs and batch_size must be >= 1")
        if not s.lr > 0 or not 0 < s.gamma <= 1:
            raise ConfigError(f"{key}: lr must be > 0 and gamma in (0, 1]")
        if any(m_ < 1 for m_ in s.milestones) or sorted(s.milestones) != s.milestones:
            raise ConfigError(f"{key}.milestones: {s.milestones} must be increasing and >= 1")
    return cfg


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["model.alpha=0.5", "data.test_users=[S2,S3]"]`` -> dotted dict with YAML-typed values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {key}: cannot parse value {raw!r}: {e}") from None
    return out


def unflatten(dotted: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        parts = key.split(".")
        node = nested
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {p} is not a section")
            node = child
        node[parts[-1]] = value
    return nested


def _merge(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in upd.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def from_dict(values: dict[str, Any], overrides: dict[str, Any] | None = None) -> Config:
    """Build and validate a config from a dict plus dotted overrides. The dict may be nested
    (``{"model": {"alpha": 1}}``, the form of a run's ``config.yaml``), dotted (``{"model.alpha": 1}``, the
    form of a search space's ``base``) or a mix: one YAML dialect for every file that holds settings."""
    merged = _merge(unflatten(flatten(values or {})), unflatten(overrides or {}))
    return validate(_build(Config, merged, ""))


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Load YAML (or defaults) and apply ``--set`` style overrides, then validate."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        values = yaml.safe_load(p.read_text()) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"config file {p}: expected a mapping of settings (nested or dotted keys)")
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    return from_dict(values, overrides)


def dump(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

