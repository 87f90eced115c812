"""The search's Optuna study in an Optuna storage (a database), where users open it and later searches
start from it.

The driver alone writes it (through Ray's ``OptunaSearch`` inside the driver), so a SQLite file is safe.
By default it lives with the MLflow tracking store (:func:`default_storage`): beside a SQLite
``mlflow.db``, or, with a tracking server, in ``~/mlflow/optuna.db`` on the machine that runs the driver
(the head of the cluster files, beside the server's own database); ``--optuna-storage`` names a
database server instead. A password in that URI is shown and recorded as ``***`` and never pickled:
Ray's saved searcher holds the URI without it, and reconnects with the password this driver was given
(or, when it was given none, libpq's ``~/.pgpass`` / ``PGPASSWORD``). The study's name is
the experiment's. A new search never joins an existing study (``OptunaSearch`` would, silently): that
needs ``--resume``. ``--warm-start NAME`` copies the finished trials of an earlier study that fit this
space into the new one before its first trial.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from tuning.space.checks import is_active
from tuning.space.sampling import optuna_name
from tuning.space.types import SearchSpace
from tuning.tracking.mlflow_runs import tracking_uri as default_tracking_uri
from tuning.tracking.mlflow_runs import workdir

DEFAULT_STORAGE = "optuna.db"  # beside a SQLite mlflow.db (the working folder's by default)
SERVER_STORAGE = "~/mlflow/optuna.db"  # with a tracking server: where the cluster files keep MLflow's database
METRIC_ATTR = "egosearch.metric"  # the study's user attribute: which metric its values are
STORAGE_TAG, STUDY_TAG = "optuna_storage", "optuna_study"  # on the parent MLflow run
WARM_TAG = "warm_start"  # on the parent MLflow run: what the search was warmed from
RAY_TRIAL_ATTR = "ray_trial_id"  # a trial's user attribute: the Ray trial (and MLflow run tag) it is
RERUN_ATTR = "egosearch.rerun_of"  # a trial's user attribute: the FAIL trial it continues (Ray ran it again)
STOPPED_ATTR = "egosearch.stopped_at_epoch"  # a trial's user attribute: the epoch the scheduler stopped it at
# the study's user attributes, set when its search starts: what its trials' values are comparable with
DATA_ATTR = "egosearch.data"  # {"fingerprint", "root"}: the data set its trials trained and validated on
SCHEDULE_ATTR = "egosearch.schedule"  # {"epochs_scale", "stage_epochs"}: the base configuration's stages
OBJECTIVES_ATTR = "egosearch.objectives"  # [[name, "max" | "min"], ...]: what its values are


class StudyError(RuntimeError):
    pass


def default_storage(tracking_uri: str) -> str:
    """The study's storage when ``--optuna-storage`` is not given, from the MLflow tracking URI: beside a
    SQLite store (``sqlite:///DIR/mlflow.db`` -> ``sqlite:///DIR/optuna.db``); with an ``http(s)`` tracking
    server, ``~/mlflow/optuna.db`` where the driver runs (on the cluster files' heads, beside the server's
    ``mlflow.db``); any other store (a database MLflow talks to directly): ``optuna.db`` in the work folder
    (``$EGOSEARCH_WORKDIR``, else the working folder)."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"sqlite:///{SERVER_STORAGE}"
    path = tracking_uri[len("sqlite:///"):].split("?", 1)[0] if tracking_uri.startswith("sqlite:///") else ""
    if path in ("", ":memory:"):
        return f"sqlite:///{workdir() / DEFAULT_STORAGE}"
    return f"sqlite:///{path.rsplit('/', 1)[0] + '/' if '/' in path else ''}{DEFAULT_STORAGE}"


def storage_uri(given: str | None, tracking_uri: str | None = None) -> str:
    """``--optuna-storage`` as a URI with an absolute SQLite path (the search's files move with the
    working folder; a restored searcher reconnects by this URI). Default: :func:`default_storage` of
    ``tracking_uri`` (``optuna.db`` here when that is None), its folder made when missing."""
    uri = given or default_storage(tracking_uri or default_tracking_uri(None))
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).expanduser().resolve()}"
    if given is None and uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return uri


# ``scheme://user:password@``, split as SQLAlchemy splits a URL (the password ends at the first "@")
_PASSWORD = re.compile(r"^([\w+]+://[^:/@]*):([^@]*)@")
_GIVEN: dict[str, str] = {}  # a storage URI without its password -> as given, in this process only


def redact(uri: str) -> str:
    """``uri`` with its password shown as ``***`` (``postgresql://user:***@host/db``): for tags and logs."""
    return _PASSWORD.sub(r"\1:***@", uri)


def _bare(uri: str) -> str:
    return _PASSWORD.sub(r"\1@", uri)


def connect_uri(uri: str) -> str:
    """The URI to connect with for ``uri`` as pickled, recorded or shown: the one this process was given
    (password included), else ``uri`` without a password (libpq then reads ``~/.pgpass`` or ``PGPASSWORD``)."""
    return _GIVEN.get(_bare(uri), _bare(uri))


class SafeRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, whose pickles (Ray's ``tuner.pkl`` and searcher state hold it) carry its URI
    without the password; unpickled, it reconnects through :func:`connect_uri`."""

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "url": _bare(self.url)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__({**state, "url": connect_uri(state["url"])})


def open_storage(uri: str) -> optuna.storages.RDBStorage:
    """The storage, or a ``StudyError`` naming the URI (password hidden) when it cannot be opened (bad URI,
    a server that does not answer, a folder that does not exist)."""
    if _PASSWORD.match(uri):
        _GIVEN[_bare(uri)] = uri
    try:
        return SafeRDBStorage(connect_uri(uri), engine_kwargs=_engine_kwargs(uri))
    except Exception as e:  # sqlalchemy's errors: a bad URL, a refused connection, an unwritable file
        msg = str(e).splitlines()[0][:300] if str(e) else ""
        raise StudyError(f"--optuna-storage {redact(uri)} cannot be opened: {type(e).__name__}: "
                         f"{msg.replace(uri, redact(uri))}") from None


def record_study(client: Any, parent_id: str, uri: str, name: str) -> None:
    """The study's storage (password hidden) and name as tags of the search's parent MLflow run."""
    client.set_tag(parent_id, STORAGE_TAG, redact(uri))
    client.set_tag(parent_id, STUDY_TAG, name)


def _engine_kwargs(uri: str) -> dict[str, Any]:
    if uri.startswith(("postgresql", "mysql")):
        return {"connect_args": {"connect_timeout": 10}}  # an unreachable server fails now, not in minutes
    return {}


def has_study(storage: optuna.storages.BaseStorage, name: str) -> bool:
    return name in {s.study_name for s in storage.get_all_studies()}


def check_new_study(storage: optuna.storages.BaseStorage, uri: str, name: str, resume: bool) -> None:
    """A new search under a name that already has a study is refused (``--resume`` continues one)."""
    if not resume and has_study(storage, name):
        raise StudyError(f"an Optuna study named {name!r} already exists in {redact(uri)}: add --resume to continue "
                         "that search, pass another --experiment name, or another --optuna-storage")


def distributions(space: SearchSpace) -> dict[str, dict[str, BaseDistribution]]:
    """Each param's Optuna distributions, by Optuna name (a subset: one true/false per block)."""
    out: dict[str, dict[str, BaseDistribution]] = {}
    for p in space.params:
        if p.type == "float":
            out[p.key] = {p.key: FloatDistribution(p.low, p.high, log=p.log, step=p.step)}
        elif p.type == "int":
            out[p.key] = {p.key: IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))}
        elif p.type == "categorical":
            out[p.key] = {p.key: CategoricalDistribution(list(p.choices))}
        else:
            out[p.key] = {optuna_name(p, b): CategoricalDistribution([False, True]) for b in p.choices}
    return out


def fitting(space: SearchSpace, trial: FrozenTrial) -> FrozenTrial | None:
    """``trial`` remade with this space's distributions, or None when it does not fit: a param this space
    samples for it (under its own values' conditions) missing, or a value outside this space's domain.
    Params this space does not search are dropped."""
    dists = distributions(space)
    params: dict[str, Any] = {}
    used: dict[str, BaseDistribution] = {}
    values: dict[str, Any] = {}
    for p in space.params:
        if not is_active(p, values):
            continue
        for name, dist in dists[p.key].items():
            if name not in trial.params:
                return None
            params[name], used[name] = trial.params[name], dist
        if p.type != "subset":
            values[p.key] = trial.params[p.key]
    try:  # create_trial checks each value against its distribution
        return optuna.trial.create_trial(
            state=trial.state, value=trial.value, params=params, distributions=used,
            intermediate_values=trial.intermediate_values,
            user_attrs={**{k: v for k, v in trial.user_attrs.items() if k not in (RAY_TRIAL_ATTR, RERUN_ATTR)},
                        "warm_start_from": f"trial {trial.number}"})
    except ValueError:
        return None


def name_objectives(study: optuna.Study, space: SearchSpace) -> None:
    """Name the study's objectives (``val_top1``; each objective of a multi-objective space), which
    optuna-dashboard and Optuna's plots show instead of "Objective 0"."""
    with warnings.catch_warnings():  # experimental in Optuna since 3.2; stable in use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([n for n, _ in space.objectives] or [space.metric])


def study_record(space: SearchSpace, stage_epochs: list[int], epochs_scale: float, data_root: str,
                 fingerprint: str) -> dict[str, Any]:
    """What a new study records about its search (user attrs, set by ``make_searcher``): its data set, its
    schedule (the base configuration's epochs per stage, after ``epochs_scale``) and its objectives."""
    return {DATA_ATTR: {"fingerprint": fingerprint, "root": data_root},
            SCHEDULE_ATTR: {"epochs_scale": float(epochs_scale), "stage_epochs": [int(e) for e in stage_epochs]},
            OBJECTIVES_ATTR: [list(o) for o in space.objectives] or [[space.metric, space.mode]]}


def _check_comparable(study: optuna.Study, label: str, source: str, record: dict[str, Any]) -> None:
    """A warm start takes values measured on the same data with the same schedule, or refuses, naming both.
    A study that records neither (made before studies recorded them) is refused too: its values may come
    from another data set or a shorter schedule, and its pruned trials from another fidelity."""
    attrs = study.user_attrs
    if DATA_ATTR not in attrs or SCHEDULE_ATTR not in attrs:
        raise StudyError(f"--warm-start {source}: {label} does not record the data set and schedule it ran on (a "
                         "search before these records); a warm start needs both to match this search's")
    theirs, ours = attrs[DATA_ATTR], record[DATA_ATTR]
    if theirs.get("fingerprint") != ours["fingerprint"]:
        raise StudyError(f"--warm-start {source}: {label} ran on the data at {theirs.get('root')} (fingerprint "
                         f"{theirs.get('fingerprint')}); this search uses {ours['root']} (fingerprint "
                         f"{ours['fingerprint']}): values on another data set are not comparable")
    theirs, ours = attrs[SCHEDULE_ATTR], record[SCHEDULE_ATTR]
    if theirs != ours:
        raise StudyError(f"--warm-start {source}: {label} ran the schedule {_schedule(theirs)}; this search runs "
                         f"{_schedule(ours)}: values (and pruned trials' epochs) of another schedule are not "
                         "comparable")


def _schedule(s: dict[str, Any]) -> str:
    return f"train.epochs_scale {s.get('epochs_scale')}, epochs per stage {s.get('stage_epochs')}"


def warm_trials(storage: optuna.storages.BaseStorage, source: str, space: SearchSpace, client: Any,
                record: dict[str, Any]) -> tuple[list[FrozenTrial], int, str]:
    """The finished trials (complete or pruned) of the study ``source`` that fit ``space``, how many were
    skipped, and what was used ("study NAME in URI"). A study of that name in this storage is used;
    else the MLflow experiment of that name, through the study its newest search recorded. The source
    must be a single-metric study of the same metric and mode, data set and schedule as ``record``
    (:func:`study_record` of this search), or a ``StudyError`` says what differs before any trial runs;
    with the same schedule a pruned trial's intermediate values are at the epochs this search reaches."""
    study, label = _source_study(storage, source, client)
    if len(study.directions) > 1:
        objectives = study.user_attrs.get(OBJECTIVES_ATTR) or [d.name.lower() for d in study.directions]
        raise StudyError(f"--warm-start {source}: {label} is a multi-objective study ({objectives}); a warm start "
                         f"takes the trials of a single-metric study of {space.metric}")
    want = "maximize" if space.mode == "max" else "minimize"
    direction = study.direction.name.lower()
    metric = study.user_attrs.get(METRIC_ATTR)
    if direction != want or (metric is not None and metric != space.metric):
        raise StudyError(f"--warm-start {source}: {label} {direction}s {metric or 'an unrecorded metric'}; this "
                         f"search {want}s {space.metric} (a warm start needs the same metric and mode)")
    _check_comparable(study, label, source, record)
    finished = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    fit = [f for f in (fitting(space, t) for t in finished) if f is not None]
    if not fit:
        raise StudyError(f"--warm-start {source}: none of the {len(finished)} finished trials of {label} fits this "
                         "space (a param missing, or a value outside its range or choices)")
    return fit, len(finished) - len(fit), label


def _source_study(storage: optuna.storages.BaseStorage, source: str, client: Any) -> tuple[optuna.Study, str]:
    if has_study(storage, source):
        return optuna.load_study(study_name=source, storage=storage), f"study {source!r}"
    exp = client.get_experiment_by_name(source) if client is not None else None
    if exp is not None:
        runs = client.search_runs([exp.experiment_id], f"tags.`{STUDY_TAG}` != ''", max_results=1,
                                  order_by=["attributes.start_time DESC"])
        if runs:
            tags = runs[0].data.tags
            try:
                study = optuna.load_study(study_name=tags[STUDY_TAG], storage=connect_uri(tags[STORAGE_TAG]))
            except Exception as e:  # the storage moved or is gone
                raise StudyError(f"--warm-start {source}: the experiment's study {tags[STUDY_TAG]!r} in "
                                 f"{tags[STORAGE_TAG]} cannot be opened: {type(e).__name__}: {e}") from None
            return study, f"experiment {source!r} (study {tags[STUDY_TAG]!r} in {tags[STORAGE_TAG]})"
        raise StudyError(f"--warm-start {source}: the MLflow experiment {source!r} records no Optuna study "
                         "(it ran before studies were stored); name a study instead")
    raise StudyError(f"--warm-start {source}: no Optuna study and no MLflow experiment of that name")


def orphans(study: optuna.Study, known: set[int]) -> list[int]:
    """Numbers of RUNNING trials the searcher does not know: asked for after Ray last saved the search,
    then lost with the driver. They never ran."""
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number not in known]
