"""End to end in a real browser: a tiny smoke search, `mlflow server` over its store, and headless
Chromium (driven by Playwright) showing what README promises a user sees in the MLflow UI: the
search's parent run, its trials nested under it as child runs, the trials sorted by best_val_top1 with
the champion's first, and the champion registered model.

Needs Debian's Chromium at /usr/bin/chromium and the `playwright` package (the `test` extra); run
`tests/setup_browser.sh` once (`.ci/run` does). Playwright never downloads a browser here.
Screenshots go to $EGOSEARCH_ARTIFACTS/browser (default: test-artifacts/browser in the repository,
kept after a passing run, unlike pytest's tmp folders); the path is printed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXPERIMENT = "test_space"  # the session's smoke search (tests/conftest.py)
MODEL = f"egosearch-{EXPERIMENT}"
UI_TIMEOUT_MS = 90_000  # the React app on a loaded 2-core machine
SORT_METRIC = "best_val_top1"  # what README tells a user to sort the trials by


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_DEDUP_LOGS": "0", "TQDM_DISABLE": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


@pytest.fixture
def sync_playwright():
    """Checked before the search runs, so a machine without the browser fails at once."""
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(CHROMIUM)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        missing.append("the python package playwright")
    if missing:
        pytest.fail(f"browser test needs {' and '.join(missing)}: run tests/setup_browser.sh", pytrace=False)
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def artifacts(capsys: pytest.CaptureFixture[str]) -> Path:
    root = os.environ.get("EGOSEARCH_ARTIFACTS")
    folder = (Path(root) if root else REPO / "test-artifacts") / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    with capsys.disabled():
        print(f"\n[test_browser] screenshots: {folder}")
    return folder


@pytest.fixture
def searched(tmp_path: Path, smoke_search) -> str:
    """The session's three-trial smoke search, in a copy of its MLflow store; the tracking URI."""
    return smoke_search.own_store(tmp_path)


@pytest.fixture
def mlflow_ui(tmp_path: Path, searched: str):
    """`mlflow server` on 127.0.0.1 over the search's store; yields its base URL."""
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    assert mlflow_bin, "the mlflow CLI is not installed"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "mlflow-server.log").open("w")
    proc = subprocess.Popen([mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", searched, "--artifacts-destination", str(tmp_path / "mlartifacts")],
                            cwd=tmp_path, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=3) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, (
                "mlflow server did not come up:\n" + (tmp_path / "mlflow-server.log").read_text()[-3000:])
            time.sleep(1)
        yield url
    finally:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


def _sort_runs_by(page, metric: str) -> None:
    """The runs table's "Sort: ..." menu: pick ``metric``, highest first; the menu is closed after."""
    page.get_by_role("button", name="Sort:").click()
    page.get_by_role("menuitemcheckbox", name=metric, exact=True).click()
    if not page.get_by_role("menu").count():
        page.get_by_role("button", name=f"Sort: {metric}").click()
    page.get_by_role("button", name="Sort descending").click()
    page.keyboard.press("Escape")
    page.get_by_role("button", name=f"Sort: {metric}").wait_for()
    page.get_by_role("columnheader", name=metric, exact=True).first.wait_for()  # the sorted column is shown
    assert "orderByAsc=false" in page.url, f"the runs are not sorted highest first: {page.url}"


def _table_rows(page, metric: str) -> list[tuple[str, str]]:
    """(run id, the ``metric`` cell's text) of each run row, top to bottom as the user sees them.

    The grid draws a row in pieces (the pinned run-name part, the scrolling part) and may put them in
    the DOM in any order: ``aria-rowindex`` is the row's place on screen, the run name's link names the
    run, and the metric's cell sits in the column whose ``aria-colindex`` its header has."""
    col = page.locator(f'[role=columnheader][aria-colindex]:has-text("{metric}")').first.get_attribute("aria-colindex")
    run_of: dict[int, str] = {}
    value_of: dict[int, str] = {}
    for row in page.get_by_role("row").all():
        index = int(row.get_attribute("aria-rowindex"))
        for link in row.get_by_role("link").all():
            match = re.search(r"/runs/([0-9a-f]{32})$", link.get_attribute("href") or "")
            if match:
                run_of[index] = match.group(1)
        cell = row.locator(f'[role=gridcell][aria-colindex="{col}"]')
        if cell.count():
            value_of[index] = cell.inner_text().strip()
    return [(run_of[i], value_of.get(i, "")) for i in sorted(run_of)]


def _assert_champion_leads(page, client: mlflow.MlflowClient, parent, champion_run_id: str) -> None:
    """Sorted by best_val_top1, the UI lists the parent run among its trials, flat (the parent logs the
    search's best_val_top1 too, so it sits beside the champion's trial). Among the trial rows, the
    champion's comes first; where several trials tie on the top value, the UI may list any of them
    first, so the champion must be among those tied first rows. The values the UI shows must be the
    tracking store's, and the trials must run from highest to lowest, those without the metric last."""
    rows = _table_rows(page, SORT_METRIC)
    trials = [(run_id, shown) for run_id, shown in rows if run_id != parent.info.run_id]
    trial_ids = {r.info.run_id for r in client.search_runs([parent.info.experiment_id],
                                                           f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    # every row is one of this search's trials; the UI has been seen to leave a trial without the metric out of
    # the sorted table (one full run: 2 of 3 trials listed), so the rows are checked as a subset
    listed = {run_id for run_id, _ in trials}
    assert trials and listed <= trial_ids, f"the sorted table lists {rows}, not the trials {trial_ids}"
    stored = {run_id: client.get_run(run_id).data.metrics.get(SORT_METRIC) for run_id in trial_ids}
    for run_id, shown in trials:
        value = stored[run_id]
        assert (shown == "-") if value is None else (float(shown) == value), (
            f"run {run_id}: the UI shows {SORT_METRIC}={shown!r}, the store has {value}")
    order = [stored[run_id] for run_id, _ in trials]
    ranked = sorted(order, key=lambda v: (v is None, -(v or 0.0)))
    assert order == ranked, f"the UI's trials are not sorted by {SORT_METRIC}, highest first: {order}"
    top = order[0]
    tied_first = [run_id for run_id, _ in trials if stored[run_id] == top]
    assert champion_run_id in tied_first, (
        f"the champion's run {champion_run_id} ({SORT_METRIC}={stored.get(champion_run_id)}) is not listed first "
        f"among the trials; first: {tied_first} at {top}")


def test_mlflow_ui_shows_parent_children_and_champion(sync_playwright, searched: str, mlflow_ui: str,
                                                      artifacts: Path) -> None:
    client = mlflow.MlflowClient(searched)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = [r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3 and all(children)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id == parent.data.tags["best_run_id"]

    base = mlflow_ui
    external: list[str] = []

    def local_only(route) -> None:  # the UI must work offline; anything else is recorded and refused
        if route.request.url.startswith(base):
            route.continue_()
        else:
            external.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            context.set_default_timeout(UI_TIMEOUT_MS)
            context.route("**/*", local_only)
            page = context.new_page()

            try:
                # The experiment's runs table: one top-level row, the search's parent run, collapsed.
                page.goto(f"{base}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning")
                page.get_by_text(parent.info.run_name, exact=True).wait_for()
                page.get_by_text(f"{len(runs)} matching runs").wait_for()
                page.screenshot(path=str(artifacts / "1_experiment.png"), full_page=True)
                for name in children:  # trials are nested under the parent, not listed beside it
                    assert page.get_by_text(name, exact=True).count() == 0, f"{name} is not nested under the parent"

                # Expanding the parent shows every trial as a child run.
                parent_row = page.get_by_role("row").filter(has_text=parent.info.run_name)
                parent_row.get_by_role("button").click()
                for name in children:
                    page.get_by_text(name, exact=True).wait_for()
                page.screenshot(path=str(artifacts / "2_child_runs.png"), full_page=True)

                # Sorted by best_val_top1 (the "Sort" menu, highest first), the champion's trial leads.
                _sort_runs_by(page, SORT_METRIC)
                _assert_champion_leads(page, client, parent, champion.run_id)
                page.screenshot(path=str(artifacts / "2b_sorted_by_best_val_top1.png"), full_page=True)

                # The Models page: the registered model with its champion alias.
                page.goto(f"{base}/#/models")
                page.get_by_text(MODEL, exact=True).wait_for()
                page.keyboard.press("Escape")  # a "new registry UI" announcement may cover the table
                model_row = page.get_by_role("row").filter(has_text=MODEL)
                model_row.get_by_text("champion").wait_for()
                assert f"Version {champion.version}" in model_row.inner_text()
                page.screenshot(path=str(artifacts / "3_models.png"), full_page=True)

                # The model's page: the champion alias sits on the registered version.
                page.goto(f"{base}/#/models/{MODEL}")
                version_row = page.get_by_role("row").filter(has_text="champion")
                version_row.wait_for()
                assert f"Version {champion.version}" in version_row.inner_text()
                page.screenshot(path=str(artifacts / "4_champion.png"), full_page=True)
            except Exception:
                page.screenshot(path=str(artifacts / "failure.png"), full_page=True)
                raise
        finally:
            browser.close()
    assert not external, f"the MLflow UI requested outside addresses: {external}"
