"""The tags by which the search finds its MLflow runs again, in a module of their own: the callback writes
them, the parent-run bookkeeping and the study plots read them, and none of those imports another for them."""

PARENT_TAG = "egosearch.ray_path"  # on a search's parent run: the Ray folder of the search
TRIAL_TAG = "ray.trial_id"  # on a trial's child run: its Ray trial id
OUTCOME_TAG = "egosearch.outcome"  # on a trial's child run: running, completed, early_stopped or failed
