"""The champion: the best trial's checkpoint as an MLflow pyfunc model with alias ``champion``.

``mlflow.pyfunc.load_model("models:/NAME@champion").predict(x)`` takes (B, T, 3, H, W) frames, either
uint8 as ``egomodel``'s datasets give them (normalised here) or float32 already normalised, and
returns (B, num_classes) class probabilities; the class names are in the model's metadata
(``model.metadata.metadata["classes"]``). Flow and two-stream models take a dict
``{"flow": (B, [S,] 2*stack, H, W)}`` / ``{"frames": ..., "flow": ...}`` instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

ALIAS = "champion"
_REPO = Path(__file__).resolve().parents[2]  # the checkout: egomodel/ and tuning/ go with the model


class EgoRNNModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from egomodel.model.checkpoint import load_model

        self.model, self.cfg, self.classes = load_model(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - mlflow reads these hints
        import torch

        keys = self.model.input_keys
        if isinstance(model_input, dict):  # flow and two_stream models: {"frames": ..., "flow": ...}
            missing = [k for k in keys if k not in model_input]
            if missing:
                raise ValueError(f"this {self.cfg.model.variant} model needs inputs {list(keys)}; missing {missing}")
            xs = [_tensor(k, model_input[k]) for k in keys]
        else:
            xs = [_tensor(keys[0], model_input)]
        with torch.no_grad():
            return torch.softmax(self.model(*xs).logits.float(), dim=1).numpy()


def _tensor(key: str, value: Any) -> Any:
    """One model input as float32: uint8 frames (what ClipDataset returns) are normalised as in training."""
    import torch

    from egomodel.data.transforms import normalize_frames

    arr = np.asarray(value)
    if key == "frames" and arr.dtype == np.uint8:
        return normalize_frames(torch.from_numpy(arr))
    return torch.as_tensor(arr.astype(np.float32, copy=False))


def register(client: mlflow.MlflowClient, run_id: str, checkpoint: Path, classes: list[str], name: str) -> str:
    """Log the checkpoint as a pyfunc model in the trial's run, register it, point ``champion`` at it."""
    mlflow.set_tracking_uri(client.tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=EgoRNNModel(),
            artifacts={"checkpoint": str(checkpoint)},
            code_paths=[str(_REPO / "egomodel"), str(_REPO / "tuning")],
            metadata={"classes": classes},
            pip_requirements=["torch", "torchvision", "numpy", "pillow", "pyyaml"],
        )
    version = mlflow.register_model(info.model_uri, name)
    client.set_registered_model_alias(name, ALIAS, version.version)
    return f"models:/{name}@{ALIAS}"
