"""The address every MLflow hint prints opens the runs view: a real `mlflow server` on 127.0.0.1 (started and stopped
by PID), the sweep's runs as the sweep driver lays them out, and Debian's headless Chromium driven by Playwright.
The address opens MLflow's model-training view, whose runs table lists the sweep run; expanding it lists its nested
trials."""

import re
import shutil

import pytest

from conftest import free_port, start_mlflow_server, stop_server
from multistep.config import load_sweep
from multistep.sweep.driver import _open_runs
from multistep.tracking import mlflow_layout as ml

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]  # fmt: skip - the closed network refuses Google's hosts


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package (.ci/run installs it)")
def test_printed_address_opens_the_runs_table_with_the_sweep_and_its_trials(tiny_sweep, tmp_path):
    from playwright.sync_api import sync_playwright

    server, uri = start_mlflow_server(tmp_path, free_port())
    try:
        plan = load_sweep(tiny_sweep)
        srid, sweep_id, run_ids = _open_runs(ml.client(uri), plan, uri, str(tmp_path), False)
        exp_id = ml.client(uri).get_run(srid).info.experiment_id
        hint = ml.ui_hint(uri, exp_id)
        address = re.search(r"http://\S+", hint).group(0)
        assert address == f"{uri}/#/experiments/{exp_id}/runs?workflowType=machine_learning" and "Chart view" in hint
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page()
            page.goto(address)
            page.get_by_text(sweep_id).wait_for(timeout=60_000)  # the sweep run, in the runs table
            page.get_by_text("Model registry").wait_for(timeout=30_000)  # the model-training view's navigation...
            assert page.get_by_text("Prompts", exact=True).count() == 0  # ...not the GenAI one
            assert page.get_by_text(f"{1 + len(run_ids)} matching runs").count() == 1
            page.locator("button[data-component-id*='runnamecellrenderer']").first.click()  # expand the sweep run
            for rid in run_ids:
                name = ml.client(uri).get_run(rid).info.run_name
                page.get_by_text(name).wait_for(timeout=30_000)  # each nested trial, under it
            page.screenshot(path=str(tmp_path / "runs.png"))
            browser.close()
    finally:
        stop_server(server)
