"""Search spaces: loading and checking the YAML files (``load``, ``strict_yaml``, ``fields``, ``checks``,
``errors``), what a loaded space is (``types``), and its Optuna / Ray side (``sampling``).

The names below are the package's face, and also the names under which searches saved before the module
move pickled these classes (``tuning.space.Param``, ``tuning.space.SearchSpace``, ``tuning.space.Scheduler``;
``tuning.space.DefineByRun`` from before that): Ray's saved state finds the very same classes here.
"""

from tuning.space.errors import SpaceError
from tuning.space.load import SPACES_DIR, list_spaces, load_space
from tuning.space.sampling import DefineByRun
from tuning.space.types import Param, Scheduler, SearchSpace

__all__ = ["SPACES_DIR", "DefineByRun", "Param", "Scheduler", "SearchSpace", "SpaceError", "list_spaces",
           "load_space"]
