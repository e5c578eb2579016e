"""The web page in headless Chromium: upload an image, see its duplicate at rank 1, screenshot.

Skipped cleanly unless Debian's ``chromium`` and ``chromium-driver`` and the ``selenium``
package are installed. Set ``TWICE_SCREENSHOT_DIR`` to keep the screenshot.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from PIL import Image
from werkzeug.serving import make_server

from conftest import make_options
from imagegen import image_bytes, make_image, write_images
from twice.indexer import reindex
from twice.web import app as api

TOKEN = "twice_browser-test-token"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian chromium and chromium-driver"
)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def site(tmp_path, embedder):
    """The real app over a small index, served over HTTP on 127.0.0.1 from a thread."""
    options = make_options(tmp_path / "data", api_token=TOKEN)
    paths = write_images(tmp_path / "images", 5)
    reindex([tmp_path / "images"], options, embedder, progress=False)
    app = api.create_app(options, embedder=embedder)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", paths
    server.shutdown()
    api.service_of(app).close()


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,900"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def choose_file(driver, path: Path) -> None:
    field = driver.find_element(By.ID, "image")
    driver.execute_script("arguments[0].hidden = false;", field)  # the page hides it behind the drop zone
    field.send_keys(str(path))


def test_upload_shows_the_duplicate_at_rank_1(site, browser, tmp_path):
    base, paths = site
    wait = WebDriverWait(browser, 60)
    browser.get(base + "/")
    wait.until(EC.text_to_be_present_in_element((By.ID, "health"), "5 images indexed"))

    choose_file(browser, paths[3])
    browser.find_element(By.ID, "search-button").click()
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#results li.result")))
    cards = browser.find_elements(By.CSS_SELECTOR, "#results li.result")
    assert len(cards) == 5
    first = cards[0]
    badge = first.find_element(By.CSS_SELECTOR, ".badge")
    assert badge.text == "duplicate" and "duplicate" in badge.get_attribute("class")
    assert "same bytes" in first.find_element(By.CSS_SELECTOR, ".score").text
    assert first.find_element(By.CSS_SELECTOR, ".source").text == str(paths[3])
    # The evidence line, as `twice search` prints it.
    evidence = first.find_element(By.CSS_SELECTOR, ".evidence").text
    assert evidence == "same bytes (sha256); hash 0 bits; CNN 1.000 (decided by exact, hash, cnn)"
    thumb = first.find_element(By.TAG_NAME, "img")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", thumb))
    colour = badge.value_of_css_property("background-color")
    assert colour in ("rgba(192, 57, 43, 1)", "rgb(192, 57, 43)")  # the duplicate red

    screenshot = tmp_path / "twice-page.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("TWICE_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(keep) / screenshot.name)

    mirrored = tmp_path / "mirrored.png"
    with Image.open(paths[2]) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    choose_file(browser, mirrored)
    browser.find_element(By.ID, "search-button").click()
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#results li.result .evidence"), "mirror"))
    first = browser.find_element(By.CSS_SELECTOR, "#results li.result")
    assert first.find_element(By.CSS_SELECTOR, ".source").text == str(paths[2])
    evidence = first.find_element(By.CSS_SELECTOR, ".evidence").text
    assert evidence.startswith("hash 0 bits, as mirror; CNN ") and "(decided by hash" in evidence

    new = tmp_path / "new.png"
    new.write_bytes(image_bytes(make_image(4242)))
    choose_file(browser, new)
    browser.find_element(By.ID, "add-button").click()  # writes need a token: the page asks for one
    wait.until(EC.text_to_be_present_in_element((By.ID, "message"), "enter an API token"))
    assert "(unauthorized)" in browser.find_element(By.ID, "message").text
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "add-button").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "message"), "#6: added"))
    assert browser.execute_script("return sessionStorage.getItem('twice-api-token')") == TOKEN
    assert browser.execute_script("return localStorage.length") == 0
    wait.until(EC.text_to_be_present_in_element((By.ID, "health"), "6 images indexed"))


def test_errors_are_shown_on_the_page(site, browser, tmp_path):
    base, _ = site
    browser.get(base + "/")
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    choose_file(browser, bad)
    browser.find_element(By.ID, "search-button").click()
    WebDriverWait(browser, 60).until(
        EC.text_to_be_present_in_element((By.ID, "message"), "not an image (not_image)")
    )
    assert "error" in browser.find_element(By.ID, "message").get_attribute("class")
