"""The fleet web UI in a real browser: Debian's headless Chromium driven by Selenium through
Debian's chromedriver (scripts/bootstrap browser), against a fleet of two real workers
(tests/fleetweb.py). Checks what a person sees on each page; screenshots of every page are
kept in test-artifacts/fleet/ (see docs/fleet.md)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.fleetweb import HOOK_STDERR, HOOK_STDOUT, TOKEN, Fleet, module_fleet
from tests.support import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = REPO / "test-artifacts" / "fleet"
WAIT_S = 30  # a loaded machine: the live update comes within a second when it is not


@pytest.fixture(scope="module")
def fleet(broker: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with module_fleet(tmp_path_factory.mktemp("fleetui")) as f:
        yield f


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            pytest.fail(f"{path} missing (Debian chromium, chromium-driver): bootstrap browser")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: WebDriver, name: str) -> None:
    """A screenshot of the whole page (the window grown to its height)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(1000, min(int(height) + 40, 4000)))
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    driver.set_window_size(1400, 1000)


def _on(driver: WebDriver, css: str, do: Callable[[WebElement], Any]) -> Any:
    """`do` on the element. A live page replaces its parts (`data-live`) when an event comes
    (a heartbeat is one): an element replaced between finding it and `do` is found again."""
    for _ in range(50):
        try:
            return do(driver.find_element(By.CSS_SELECTOR, css))
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{css}: replaced 50 times in a row while being used")


def _text(driver: WebDriver, css: str) -> str:
    return str(_on(driver, css, lambda e: e.text))


def _wait(driver: WebDriver, what: str, pred: Callable[[WebDriver], Any]) -> None:
    try:
        WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(pred, message=what)
    except Exception as exc:
        _shot(driver, "failed-" + what.replace(" ", "-"))
        logs = [e.get("message") for e in driver.get_log("browser")]
        said = {k: _text(driver, f"#{k}") for k in ("live", "updated", "ticker")}
        why = f"not seen in {WAIT_S}s" if isinstance(exc, TimeoutException) else repr(exc)
        raise AssertionError(f"{what}: {why}; {said}; console: {logs}") from None


def _live(driver: WebDriver) -> None:
    _wait(driver, "the live dot", lambda d: _text(d, "#live") == "live")


def test_fleet_page_shows_hosts_vms_and_the_failure(fleet: Fleet, browser: WebDriver):
    browser.get(fleet.url + "/")
    assert browser.title == "fleet · vmworker"
    assert _text(browser, "[data-k=hosts-up]") == "2"
    assert _text(browser, "[data-k=hosts-down]") == "0"
    assert _text(browser, "[data-k=failures-hour]") == "1"
    assert _text(browser, "[data-k=vms-paused]") == "1"
    page = _text(browser, "main")
    assert fleet.env.host in page and fleet.host_b in page  # the per-host charts
    assert "hook_failed" in page  # the latest failures
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart rect")
    _live(browser)
    _shot(browser, "01-fleet")


def test_host_page_lists_its_vms_and_operations(fleet: Fleet, browser: WebDriver):
    browser.get(f"{fleet.url}/hosts/{fleet.env.host}")
    assert _text(browser, "h1").startswith(fleet.env.host)
    assert "up" in _text(browser, "#host-status")
    vms = _text(browser, "#host-vms")
    for role, state in (("good", "running"), ("paused", "paused"), ("gone", "shutoff")):
        row = next(line for line in vms.splitlines() if fleet.vms[role]["name"] in line)
        assert state in row, row
    bad = next(line for line in vms.splitlines() if fleet.vms["bad"]["name"] in line)
    assert "failed" in bad
    ops = _text(browser, "#host-requests")
    assert "start_vm" in ops and "pause_vm" in ops and "50_quota failed" in ops
    assert "heartbeats kept" in _text(browser, "#host-charts")
    _shot(browser, "02-host")


def test_vm_page_shows_its_history_with_the_hook_output(fleet: Fleet, browser: WebDriver):
    browser.get(f"{fleet.url}/vms/{fleet.vms['bad']['uuid']}")
    assert fleet.vms["bad"]["name"] in _text(browser, "h1")
    history = _text(browser, "#vm-history")
    assert "start_vm.fail" in history and "hook/hook_failed" in history
    assert "50_quota" in history and "rc=2" in history
    assert HOOK_STDERR in history and HOOK_STDOUT in history  # the hook's output, open
    _shot(browser, "03-vm")


def test_request_page_shows_every_phase_and_the_message(fleet: Fleet, browser: WebDriver):
    rid = fleet.requests["bad"]
    browser.get(f"{fleet.url}/requests/{rid}")
    facts = _text(browser, "#req-facts")
    assert "failed" in facts and "hook/hook_failed" in facts and "50_quota" in facts
    events = _text(browser, "#req-history")
    assert events.index("start_vm.before") < events.index("start_vm.fail")
    assert fleet.vms["bad"]["uuid"] in _text(browser, "main")
    _shot(browser, "04-request")


def test_failures_page_replay_dry_run_says_what_would_be_sent(fleet: Fleet, browser: WebDriver):
    browser.get(f"{fleet.url}/failures")
    table = _text(browser, "#failures")
    assert fleet.vms["bad"]["name"] in table and HOOK_STDERR in table
    browser.execute_script("sessionStorage.setItem('fleet-token', arguments[0])", TOKEN)
    box = f"#failures .replay[data-request='{fleet.requests['bad']}']"
    assert not _on(browser, box + " button.go", lambda e: e.is_enabled())  # dry first
    _on(browser, box + " button.dry", lambda e: e.click())
    _wait(browser, "the dry run's answer", lambda d: "would send" in _text(d, box))
    # a page refresh leaves a box with an answer alone
    assert f"would send start_vm to {fleet.env.host}" in _text(browser, box)
    assert _on(browser, box + " button.go", lambda e: e.is_enabled())
    _shot(browser, "05-failures-dry-run")


def test_a_new_operation_appears_without_a_reload(fleet: Fleet, browser: WebDriver):
    browser.get(f"{fleet.url}/hosts/{fleet.host_b}")
    _live(browser)
    browser.execute_script("window.notReloaded = true")
    before = _text(browser, "#host-requests")
    rid = fleet.env.publish(
        "start_vm", {"uuid": fleet.vms["other"]["uuid"]}, routing_key=fleet.host_b
    )
    fleet.tap.wait_terminal(rid)
    fleet.wait_stored(rid, "ok")
    _wait(browser, "the new operation on the page", lambda d: rid[:8] in _text(d, "#host-requests"))
    assert browser.execute_script("return window.notReloaded") is True
    assert _text(browser, "#host-requests") != before
    assert "start_vm" in _text(browser, "#ticker")  # the live ticker said so too
    _shot(browser, "06-live-update")
