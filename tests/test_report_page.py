"""The HTML leaderboard as a reader meets it, and the majority class behind it.

The page is opened in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven by selenium with
the driver at /usr/bin/chromedriver, never a downloaded one): the summary comes first, a click on a header sorts its
rows, the filter hides rows, each defense has a drill-down whose links lead to the run's files, and the page logs
no script error. The board is built from a run folder as `sdm run` leaves it: cells, trials files and run.json, its
config the smoke config, so the majority class of the test pool is read from the real stand-in corpus.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pyarrow.parquet as pq
import pytest

from harness.configfile import load_config
from harness.data.loader import load_corpus
from harness.data.prepare import carve_pools
from harness.leaderboard import build_leaderboard
from harness.report.majority import majority_accuracy
from tests.conftest import SMOKE
from tests.test_leaderboard import cell, write_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DEFENSES = {"random-init": 0.5, "bert": 0.7, "mlac": 0.52}


def smoke_fingerprint_and_test_labels() -> tuple[str, dict[str, np.ndarray]]:
    """The smoke config's corpus fingerprint and its test pool's labels, read through the data stage directly."""
    cfg = load_config(SMOKE)
    corpus = load_corpus(cfg.data)
    pools = carve_pools(cfg, corpus)
    test = corpus.splits[pools.info["test"].split].data
    return corpus.fingerprint, {c: test.column(c).to_numpy()[pools.rows["test"]] for c in cfg.data.labels}


@pytest.fixture(scope="module")
def run_with_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three defenses, two attacks, both roles, three budgets, three seeds, measured on the smoke config's data."""
    fingerprint, _ = smoke_fingerprint_and_test_labels()
    # the found model (the selected trial replayed with its own seed) a little above its reruns on test
    cells = [cell(d, a, role, b, s, acc, data_fingerprint=fingerprint, data_id="standin (harness/data/standin/data)",
                  best_hyperparameters=json.dumps({"lr": 3e-4 * (s + 1), "steps": 40 + b}),
                  found_val_accuracy=acc, found_test_accuracy=acc + 0.004)
             for d, base in DEFENSES.items()
             for a in ("finetune", "probe")
             for role in ("harmful", "desired")
             for b in (20, 50, 200)
             for s in range(3)
             for acc in [base + b / 1000 + s / 100 + (0.02 if a == "probe" else 0)]]
    run = write_run(tmp_path_factory.mktemp("page") / "run-a", cells)
    (run / "run.json").write_text(json.dumps({"experiment": "smoke",
                                              "config": load_config(SMOKE).model_dump(mode="json")}))
    return run


def test_majority_class_is_read_from_the_runs_data(tmp_path: Path, run_with_config: Path):
    _, labels = smoke_fingerprint_and_test_labels()
    expected = {task: np.bincount(values).max() / len(values) for task, values in labels.items()}
    files = build_leaderboard([run_with_config], tmp_path / "board")
    first = pq.read_table(files.summary).to_pylist()[0]
    assert first["harmful_majority_accuracy"] == pytest.approx(expected["gender"])
    assert first["desired_majority_accuracy"] == pytest.approx(expected["profession"])
    line = (f"Majority class of the test pool: gender {expected['gender']:.3f} (harmful), profession "
            f"{expected['profession']:.3f} (desired).")
    assert line in files.markdown.read_text()
    assert "dotted gray: the majority class of the test pool" in files.html.read_text()


def test_majority_class_is_unknown_without_the_config_or_with_other_data(tmp_path: Path, run_with_config: Path):
    cells = pq.read_table(run_with_config / "cells.parquet")
    assert set(majority_accuracy([run_with_config], cells)) == {"gender", "profession"}
    bare = tmp_path / "bare"
    shutil.copytree(run_with_config, bare)
    (bare / "run.json").unlink()  # a published folder: cells only
    assert majority_accuracy([bare], cells) == {}
    other = cells.set_column(cells.column_names.index("data_fingerprint"), "data_fingerprint",
                             [["changed"] * cells.num_rows])
    assert majority_accuracy([run_with_config], other) == {}  # the data changed since the run
    files = build_leaderboard([bare], tmp_path / "board")
    assert "Majority class" not in files.markdown.read_text()
    assert "majority class of the test pool: not known for these runs" in files.html.read_text()


def test_figures_are_written_as_png_svg_and_pdf_with_seeds_in_the_caption(tmp_path: Path, run_with_config: Path):
    files = build_leaderboard([run_with_config], tmp_path / "board")
    for role in ("harmful", "desired"):
        assert files.plots[role].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (files.out / f"{role}.svg").read_text().lstrip().startswith("<?xml")
        assert (files.out / f"{role}.pdf").read_bytes()[:5] == b"%PDF-"
    page = files.html.read_text()
    assert "mean over 3 seeds; bands: 95% Student t-interval over seeds" in page


def test_figures_are_small_multiples_with_error_bars_at_one_budget(run_with_config: Path):
    from matplotlib.collections import PolyCollection
    from matplotlib.container import ErrorbarContainer

    from harness.report.publish import board_tables
    from harness.report.render.plots import figure_role

    tables = board_tables([run_with_config])
    floor = tables.summary.column("harmful_majority_accuracy")[0].as_py()
    harmful = [ax for ax in figure_role(tables, "harmful").axes if ax.get_visible()]
    assert [ax.get_title() for ax in harmful] == ["mlac"]  # one panel per defense; the baselines are in each
    [panel] = harmful
    assert [line.get_label() for line in panel.get_lines()[:3]] == ["random-init", "bert", "mlac"]
    assert sum(isinstance(c, PolyCollection) for c in panel.collections) == 3  # a band each, across budgets
    assert any(list(line.get_ydata()) == [floor, floor] for line in panel.get_lines())  # the majority class
    one_budget = aggregate_one_budget(tables)
    [desired] = [ax for ax in figure_role(one_budget, "harmful").axes if ax.get_visible()]
    assert sum(isinstance(c, ErrorbarContainer) for c in desired.containers) == 3
    assert not any(isinstance(c, PolyCollection) for c in desired.collections)
    assert [t.get_text() for t in desired.get_xticklabels()] == ["random-init", "bert", "mlac"]


def aggregate_one_budget(tables):
    """The same cells at their largest harmful budget only."""
    import pyarrow.compute as pc

    from harness.report.aggregate import aggregate

    cells = tables.cells
    keep = pc.or_(pc.equal(cells["task_role"], "desired"), pc.equal(cells["budget"], 200))
    return aggregate(cells.filter(keep))


# -- in a real browser --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or not CHROMEDRIVER.is_file():
        if os.environ.get("SDM_REQUIRE_BROWSER") == "1":  # CI (.ci/run) installs them: a skip there hides a break
            pytest.fail("SDM_REQUIRE_BROWSER=1 but chromium or /usr/bin/chromedriver is missing")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver; "
                    ".ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium never looks for (or downloads) a driver of its own.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def column_texts(driver, table_id: str, column: int) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.getElementById(arguments[0]).tBodies[0].rows)"
        ".filter(r => !r.hidden).map(r => r.cells[arguments[1]].textContent.trim());", table_id, column)


def test_the_page_in_headless_chromium(tmp_path: Path, run_with_config: Path, browser):
    from selenium.webdriver.common.by import By

    files = build_leaderboard([run_with_config], tmp_path / "board")
    browser.get(files.html.as_uri())
    # The summary is the first table, on the first screen, above every figure.
    first_table = browser.find_element(By.CSS_SELECTOR, "table")
    assert first_table.get_attribute("id") == "summary"
    summary_top = browser.execute_script("return document.getElementById('summary').getBoundingClientRect().top;")
    assert summary_top < browser.execute_script("return window.innerHeight;")
    image_tops = browser.execute_script(
        "return Array.from(document.images).map(i => i.getBoundingClientRect().top);")
    assert len(image_tops) == 2 and min(image_tops) > summary_top
    facts = browser.find_element(By.ID, "facts").text
    assert "synthetic stand-in corpus" in facts and "3 (0, 1, 2)" in facts and "finetune" in facts
    assert "Majority class of the test pool: gender" in facts
    assert "synthetic stand-in corpus" in browser.find_element(By.CSS_SELECTOR, "p.banner").text

    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#summary thead th")]
    column = next(i for i, h in enumerate(headers) if h.startswith("harmful acc"))
    before = column_texts(browser, "summary", column)
    button = browser.find_elements(By.CSS_SELECTOR, "#summary thead th button.sort")[column]
    button.click()
    ascending = column_texts(browser, "summary", column)
    assert ascending == sorted(before, key=float) and ascending != before
    button.click()
    assert column_texts(browser, "summary", column) == sorted(before, key=float, reverse=True)
    assert column_texts(browser, "summary", 0) == ["bert", "mlac", "random-init"]  # rows moved whole

    box = browser.find_element(By.CSS_SELECTOR, 'input.filter[data-table="summary"]')
    box.send_keys("mlac")
    assert column_texts(browser, "summary", 0) == ["mlac"]
    assert browser.find_element(By.ID, "summary-count").text == "1 of 3 rows"
    box.clear()
    box.send_keys(" ")  # clearing fires no input event; a blank query shows every row again
    assert len(column_texts(browser, "summary", 0)) == 3

    details = browser.find_elements(By.CSS_SELECTOR, "details.defense")
    assert [d.get_attribute("id") for d in details] == ["defense-random-init", "defense-bert", "defense-mlac"]
    browser.find_element(By.CSS_SELECTOR, '#summary a[href="#defense-mlac"]').click()
    mlac = browser.find_element(By.ID, "defense-mlac")
    mlac.find_element(By.TAG_NAME, "summary").click()
    assert mlac.get_attribute("open") is not None
    rows = mlac.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == 2 * 2 * 3 * 3  # attacks x roles x budgets x seeds
    assert sum("chosen" in r.get_attribute("class").split() for r in rows) == 2 * 3 * 3  # one attack per seed
    assert "lr=0.0003, steps=60" in mlac.text
    headers = [th.text for th in mlac.find_elements(By.CSS_SELECTOR, "thead th")]
    found = next(i for i, h in enumerate(headers) if h.startswith("found model: val / test acc"))
    # mlac, finetune, harmful, budget 20, seed 0: 0.52 + 0.020 on validation, 0.004 more on test
    assert rows[0].find_elements(By.TAG_NAME, "td")[found].text == "0.540 / 0.544"
    hrefs = [a.get_attribute("href") for a in mlac.find_elements(By.CSS_SELECTOR, "tbody a")]
    assert len(hrefs) == 2 * len(rows)
    assert all(Path(unquote(h.removeprefix("file://"))).is_file() for h in hrefs)
    csv_link = browser.find_element(By.CSS_SELECTOR, 'a[download="summary.csv"]').get_attribute("href")
    csv_lines = unquote(csv_link.split(",", 1)[1]).splitlines()
    assert csv_lines[0].startswith("schema_version,defense,") and len(csv_lines) == 4

    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
