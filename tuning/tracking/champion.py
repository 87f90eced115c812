"""The champion: the best trial's checkpoint as an MLflow pyfunc model with alias ``champion``.

``mlflow.pyfunc.load_model("models:/NAME@champion").predict(x, params={"normalized": False})`` takes
(B, T, 3, H, W) float32 ``frames`` and returns (B, num_classes) class probabilities; the class names are
in the model's metadata (``model.metadata.metadata["classes"]``). The signature's ``normalized`` parameter
says what the frames hold: false (the default) pixel values 0-255, what the data sets' uint8 frames
become in a JSON request (``frames.astype(np.float32)`` in Python: MLflow refuses uint8 against a float32
spec), normalised here as in training; true: frames already normalised as the data pipeline does. Values
that cannot be what ``normalized`` says (negative pixels, "normalised" values beyond ImageNet's range) are
refused with an error, so raw pixels are never read as normalised frames. Flow and two-stream models take
``{"flow": (B, S, 2*stack, H, W)}`` / ``{"frames": ..., "flow": ...}``; the flag concerns the frames only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

ALIAS = "champion"
_REPO = Path(__file__).resolve().parents[2]  # the checkout: egomodel/ and tuning/ go with the model
MODEL_CODE = Path(__file__).with_name("champion_model.py")  # logged as the model's code (models-from-code)
NORMALIZED_RANGE = 3.0  # ImageNet-normalised pixels lie within about [-2.12, 2.64]


class EgoRNNModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from egomodel.model.checkpoint import load_model

        self.model, self.cfg, self.classes = load_model(context.artifacts["checkpoint"])

    def predict(self, context: PythonModelContext | None, model_input: np.ndarray,
                params: dict[str, Any] | None = None) -> np.ndarray:
        """Class probabilities of clips: ``model_input`` holds the frames, or for flow and two-stream models
        a dict of arrays by input name (MLflow passes what the signature names; the hint says the common
        case and keeps MLflow's own validation, by the signature, in charge)."""
        import torch

        keys = self.model.input_keys
        normalized = (params or {}).get("normalized", False)
        if not isinstance(normalized, (bool, np.bool_)):
            raise ValueError(f"params normalized must be true or false, not {normalized!r}")
        if isinstance(model_input, dict):  # flow and two_stream models: {"frames": ..., "flow": ...}
            missing = [k for k in keys if k not in model_input]
            if missing:
                raise ValueError(f"this {self.cfg.model.variant} model needs inputs {list(keys)}; missing {missing}")
            xs = [_tensor(k, model_input[k], normalized) for k in keys]
        else:
            xs = [_tensor(keys[0], model_input, normalized)]
        with torch.no_grad():
            return torch.softmax(self.model(*xs).logits.float(), dim=1).numpy()


def _tensor(key: str, value: Any, normalized: bool) -> Any:
    """One model input as float32. Frames: uint8 or float pixel values 0-255 (``normalized`` false) are
    normalised as in training; normalised frames (``normalized`` true) are taken as they are."""
    import torch

    from egomodel.data.transforms import normalize_pixels

    arr = np.asarray(value)
    if key != "frames":
        return torch.as_tensor(arr.astype(np.float32, copy=False))
    if arr.dtype == np.uint8 and normalized:
        raise ValueError("frames: uint8 frames are pixel values 0-255, but params normalized is true")
    x = torch.as_tensor(arr.astype(np.float32, copy=False))
    low, high = (float(x.min()), float(x.max())) if x.numel() else (0.0, 0.0)
    if normalized:
        if low < -NORMALIZED_RANGE or high > NORMALIZED_RANGE:
            raise ValueError(f"frames: values {low:g}..{high:g} are not normalised frames (those lie within about "
                             f"+-{NORMALIZED_RANGE:g}); send pixel values 0-255 with params normalized false")
        return x
    if low < 0 or high > 255:
        raise ValueError(f"frames: values {low:g}..{high:g} are not pixel values 0-255; frames already "
                         "normalised need params {\"normalized\": true}")
    return normalize_pixels(x)


def signature(cfg: Any) -> tuple[ModelSignature, dict[str, np.ndarray]]:
    """The pyfunc's signature for a model of ``cfg`` (float32 tensors named as its inputs, the
    ``normalized`` flag) and an input example: one clip of one black frame, pixel values."""
    d, size = cfg.data, cfg.data.image_size
    channels = {"frames": 3, "flow": 2 * d.flow_stack}
    keys = {"flow": ("flow",), "two_stream": ("frames", "flow")}.get(cfg.model.variant, ("frames",))
    specs = [TensorSpec(np.dtype(np.float32), (-1, -1, channels[k], size, size), k) for k in keys]
    params = ParamSchema([ParamSpec("normalized", "boolean", False)])
    example = {k: np.zeros((1, 1, channels[k], size, size), np.float32) for k in keys}
    return ModelSignature(inputs=Schema(specs), params=params), example


def register(client: mlflow.MlflowClient, run_id: str, checkpoint: Path, name: str) -> str:
    """Log the checkpoint as a pyfunc model in the trial's run (its class names in the model's metadata),
    register it, point ``champion`` at it. Once per run: when ``name`` already has a version from this run
    (a ``--resume`` that reaches the end again, or a driver stopped between registering and the alias),
    that version gets the alias and nothing new is logged or registered."""
    version = registered_version(client, name, run_id)
    if version is None:
        version = _log_and_register(client, run_id, checkpoint, name)
    client.set_registered_model_alias(name, ALIAS, version)
    return f"models:/{name}@{ALIAS}"


def registered_version(client: mlflow.MlflowClient, name: str, run_id: str) -> str | None:
    """The newest version of the registered model ``name`` made from the run ``run_id``, or None."""
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return str(max(int(v.version) for v in versions)) if versions else None


def _log_and_register(client: mlflow.MlflowClient, run_id: str, checkpoint: Path, name: str) -> str:
    from egomodel.config import from_dict
    from egomodel.model.checkpoint import load

    saved = load(checkpoint)
    classes = list(saved["classes"])
    sig, example = signature(from_dict(saved["config"], {"model.pretrained": "none"}))
    del saved  # the weights: only the config and the class names are needed here
    mlflow.set_tracking_uri(client.tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"checkpoint": str(checkpoint)},
            code_paths=[str(_REPO / "egomodel"), str(_REPO / "tuning")],
            metadata={"classes": classes},
            signature=sig,
            input_example=(example, {"normalized": False}),
            pip_requirements=["torch", "torchvision", "numpy", "pillow", "pyyaml"],
        )
    return mlflow.register_model(info.model_uri, name).version
