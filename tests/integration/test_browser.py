"""What a person sees: the stack's Evidently and MLflow UIs in a real headless Chromium.

The stack starts as `loopline up` starts it (state folder in pytest's tmp dir, free
ports), a tiny model is registered and promoted, a second `up` starts serving and the
feedback service, and a little traffic with feedback makes the service write one
drift window into the Evidently workspace. Then Chromium, driven by Selenium through
Debian's chromedriver, loads the pages and waits for the text the JavaScript apps
render: the project and its dashboard in Evidently, the registered model and its
champion alias in MLflow. Screenshots land in the test's tmp dir.

Chromium and chromedriver are Debian's packages; `make test` installs them when it
runs as root with apt-get. Without them this test fails (it does not skip) and says
how to install them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from kafka import KafkaProducer
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from infra.broker import FEEDBACK
from infra.process import free_port
from infra.stack import Stack, StackSettings
from models.traffic import TrafficConfig, generate
from services.common.events import FeedbackEvent
from services.common.features import materialize, open_store
from services.common.registry import Registry
from services.common.settings import CommonSettings
from tests.conftest import TinyModel
from tests.integration.helpers import drift_state, wait_until
from tests.integration.stack import register

pytestmark = pytest.mark.slow

INSTALL_HINT = ("install Debian's chromium and chromium-driver: `make test` does it when run as root with "
                "apt-get, or run `sudo apt-get install chromium chromium-driver`")
RENDER_TIMEOUT = 60.0  # seconds for a JavaScript app to fetch its data and render it
# The feedback service closes a drift window after this many joined events (2,000 by default).
DRIFT_WINDOW_EVENTS = 100


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """Headless Debian Chromium through Debian's chromedriver (no driver download)."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail(f"chromium or chromedriver is not on PATH: {INSTALL_HINT}")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    # --no-sandbox: tests run as root here. The networking flags keep Chromium from calling out of a
    # machine with no network (refused connections, slow starts).
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--window-size=1440,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    service = Service(executable_path=driver, log_output=str(tmp_path / "chromedriver.log"))
    session = webdriver.Chrome(options=options, service=service)
    try:
        yield session
    finally:
        session.quit()


def see(browser: webdriver.Chrome, url: str, texts: list[str], shot: Path) -> str:
    """Load `url`, wait until the page shows every one of `texts`, save a screenshot; returns the page text."""
    browser.get(url)

    def shown(driver: webdriver.Chrome) -> bool:
        body = driver.find_element(By.TAG_NAME, "body").text
        return all(text in body for text in texts)

    try:
        WebDriverWait(browser, RENDER_TIMEOUT, poll_frequency=0.25).until(shown)
    except TimeoutException:
        browser.save_screenshot(str(shot.with_name(f"{shot.stem}-failed.png")))
        shot.with_name(f"{shot.stem}-failed.html").write_text(browser.page_source)
        body = browser.find_element(By.TAG_NAME, "body").text
        pytest.fail(f"{url} did not show {texts} within {RENDER_TIMEOUT:.0f} s; it shows:\n{body[:2000]}")
    close_dialogs(browser)
    browser.save_screenshot(str(shot))
    return str(browser.find_element(By.TAG_NAME, "body").text)


def close_dialogs(browser: webdriver.Chrome) -> None:
    """Close what a first visit pops up over the page (MLflow announces its new registry UI), as a person would."""
    for dialog in browser.find_elements(By.CSS_SELECTOR, "[role='dialog']"):
        if dialog.is_displayed():
            dialog.find_element(By.CSS_SELECTOR, "button[aria-label='Close']").click()
            WebDriverWait(browser, RENDER_TIMEOUT).until(expected_conditions.invisibility_of_element(dialog))


def converse(serving: str, broker: str, n_events: int) -> None:
    """Predict generated requests over HTTP and send the user's label for each on the feedback topic."""
    events = generate(TrafficConfig(n_events=n_events, n_users=30, seed=61)).events
    producer = KafkaProducer(bootstrap_servers=broker, acks="all")
    try:
        with httpx.Client(base_url=serving, timeout=30) as http:
            for row in events.itertuples():
                answer = http.post("/v1/predict", json={"text": row.text, "user_id": row.user_id})
                assert answer.status_code == 200, answer.text
                event = FeedbackEvent(prediction_id=answer.json()["prediction_id"], label=row.label, source="app")
                producer.send(FEEDBACK, key=event.prediction_id.encode(), value=event.model_dump_json().encode())
        producer.flush(10)
    finally:
        producer.close(5)


def drift_windows(stack: Stack) -> float:
    """Drift windows the stack's feedback service has run, from its /metrics."""
    text = httpx.get(f"{stack.parts['feedback'].url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith('loopline_feedback_observer_total{outcome="drift_windows"} '):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def stack(tmp_path: Path, trained: TinyModel, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """The whole stack with a champion, serving and the feedback service, on free ports in a tmp state folder."""
    # Serving and the feedback service inherit this environment from `up`: small drift windows, quick updates.
    for name, value in {"DRIFT_WINDOW_EVENTS": DRIFT_WINDOW_EVENTS, "DRIFT_MIN_EVENTS": DRIFT_WINDOW_EVENTS,
                        "DRIFT_WINDOW_S": 600, "DRIFT_MIN_INTERVAL_S": 0,
                        "UPDATE_INTERVAL_S": 1, "IDLE_S": 1, "MIN_HOLDOUT": 10,
                        "FEEDBACK_WAIT_S": 5, "CHECKPOINT_INTERVAL_S": 1}.items():
        monkeypatch.setenv(f"LOOPLINE_{name}", str(value))
    monkeypatch.delenv("LOOPLINE_MODEL_NAME", raising=False)  # the name users get: the default
    state = tmp_path / "state"
    stack = Stack.for_up(StackSettings(
        state_dir=state, broker_port=free_port(), mlflow_port=free_port(), prefect_port=free_port(),
        evidently_port=free_port(), serving_port=free_port(), feedback_port=free_port()))
    try:
        stack.up()  # infra parts; serving and feedback wait for a champion
        assert stack.waiting, "a fresh registry has no champion"
        # What `loopline train` leaves behind: a champion in the stack's registry, a Feast store in the state folder.
        registry = Registry(CommonSettings(state_dir=state, mlflow_tracking_uri=stack.parts["mlflow"].url,
                                           model_name=stack.model_name))
        materialize(open_store(state / "feast", generate(TrafficConfig(n_events=200, n_users=30, seed=61)).users),
                    datetime.now(UTC))
        registry.promote(register(registry, tmp_path / "v1", trained[1], trained), "first version")
        stack.up()  # now serving and the feedback service start
        assert not stack.waiting
        yield stack
    finally:
        stack.down()


def test_the_evidently_dashboard_and_the_mlflow_registry_show_loopline_in_chromium(
        chromium: webdriver.Chrome, stack: Stack, tmp_path: Path) -> None:
    model = stack.model_name
    evidently, mlflow = stack.parts["evidently"].url, stack.parts["mlflow"].url

    assert drift_state(stack.parts["feedback"].url) == "on"
    converse(stack.parts["serving"].url, stack.parts["broker"].url, n_events=DRIFT_WINDOW_EVENTS + 60)
    assert wait_until(lambda: drift_windows(stack) >= 1, 90), "the feedback service ran no drift window"

    # Evidently: the project list, then the project's dashboard with the service's panels, then its reports.
    see(chromium, evidently, [model], tmp_path / "evidently-projects.png")
    projects = httpx.get(f"{evidently}/api/projects", timeout=10).json()
    project = next(p for p in projects if p["name"] == model)
    chromium.find_element(By.XPATH, f"//a[contains(., '{model}')]").click()
    WebDriverWait(chromium, RENDER_TIMEOUT).until(lambda d: project["id"] in d.current_url)
    dashboard = see(chromium, chromium.current_url, ["Drift share", "Window accuracy", "Drift score by column"],
                    tmp_path / "evidently-dashboard.png")
    assert model in dashboard
    snapshots = httpx.get(f"{evidently}/api/projects/{project['id']}/snapshots", timeout=10)
    assert snapshots.status_code == 200 and snapshots.json(), snapshots.text
    snapshot = snapshots.json()[0]
    see(chromium, f"{evidently}/projects/{project['id']}/reports", ["window 0", str(snapshot["id"])],
        tmp_path / "evidently-reports.png")

    # MLflow: the registered models page lists the model, its latest version and the champion alias on it.
    see(chromium, f"{mlflow}/#/models", [model, "champion"], tmp_path / "mlflow-models.png")
    row = chromium.find_element(By.XPATH, f"//*[@role='row'][.//a[normalize-space()='{model}']]").text
    assert "Version 1" in row and "champion" in row, row
    see(chromium, f"{mlflow}/#/models/{model}", [model, "Version 1", "champion"], tmp_path / "mlflow-model.png")
    row = chromium.find_element(By.XPATH, "//*[@role='row'][.//a[normalize-space()='Version 1']]").text
    assert "champion" in row, row
