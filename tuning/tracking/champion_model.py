"""The champion's model code, logged with each champion as MLflow's models-from-code: MLflow copies this file
into the model and runs it when the model is loaded, so a champion depends on no pickled class path.
(Champions logged before this file pickled ``tuning.champion.EgoRNNModel``; that name still imports.)"""

from mlflow.models import set_model

from tuning.tracking.champion import EgoRNNModel

set_model(EgoRNNModel())
