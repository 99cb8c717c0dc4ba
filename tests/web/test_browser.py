"""`openhart serve` driven by a real headless Chromium, the way a person uses it.

The server is the real command in a subprocess (tiny random checkpoint, random text encoder, on a
free loopback port). Chromium and chromedriver come from Debian (scripts/system-deps.sh); nothing
is downloaded. The screenshot goes to $OPENHART_TEST_ARTIFACTS (default: test-artifacts/).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openhart.loading import load_model

ROOT = Path(__file__).resolve().parents[2]
HART_TINY = ROOT / "tests" / "fixtures" / "conformance" / "hart-tiny"
ARTIFACTS = Path(os.environ.get("OPENHART_TEST_ARTIFACTS", ROOT / "test-artifacts"))
MAX_PROMPT_CHARS = 40
MAX_IMAGES = 4
START_TIMEOUT_S = 180
GENERATE_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"openhart serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"openhart serve did not answer within {timeout} s:\n{log.read_text()}")


class Server(str):
    """The served URL, with the path of the server's log."""

    def __new__(cls, url: str, log: Path):
        server = super().__new__(cls, url)
        server.log = log
        return server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    tmpdir = tmp_path_factory.mktemp("serve-tmp")
    env = dict(os.environ, TMPDIR=str(tmpdir), GRADIO_TEMP_DIR=str(tmpdir / "gradio"))
    command = [sys.executable, "-m", "openhart", "serve", "--model", str(HART_TINY), "--text-encoder",
               "random", "--port", str(port), "--max-prompt-chars", str(MAX_PROMPT_CHARS),
               "--max-images", str(MAX_IMAGES), "--device", "cpu"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_http(url, process, log, START_TIMEOUT_S)
        yield Server(url, log)
    finally:
        process.terminate()  # SIGTERM, as a service manager stops it
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    # the folder of every user's PNGs is gone with the server
    assert not list(tmpdir.glob("openhart-serve-*")), log.read_text()


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("the browser test needs Debian's chromium and chromium-driver: "
                    "run `bash scripts/system-deps.sh` (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1000", "--lang=en-US"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout: float, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(condition)
    except TimeoutException:
        pytest.fail(f"timed out after {timeout} s waiting for {what}; page text:\n"
                    f"{driver.find_element('tag name', 'body').text[:2000]}")


def _set_prompt(driver, text: str) -> None:
    box = _wait(driver, lambda d: d.find_element("css selector", "#prompt textarea"), 60, "the prompt box")
    box.clear()
    box.send_keys(text)


def _gallery_sources(driver) -> list[str]:
    images = driver.find_elements("css selector", "#gallery img")
    return [img.get_attribute("src") for img in images if img.get_attribute("src")]


def test_generate_in_the_browser(server, browser):
    size = load_model(HART_TINY).config.image_size
    browser.get(server)
    _set_prompt(browser, "a red apple")
    seed_box = browser.find_element("css selector", "#seed input")
    browser.find_element("css selector", "#random-seed").click()
    _wait(browser, lambda d: seed_box.get_attribute("value") not in ("", "0"), 30, "a random seed")
    seed_box.clear()
    seed_box.send_keys("0")
    browser.find_element("css selector", "#generate").click()
    sources = _wait(browser, lambda d: _gallery_sources(d) or False, GENERATE_TIMEOUT_S,
                    "the generated images in the gallery")
    _wait(browser, lambda d: "image(s) of" in d.find_element("css selector", "#status").text, 30,
          "the status line")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "web-ui.png"))

    with urllib.request.urlopen(sources[0], timeout=30) as response:
        data = response.read()
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    assert image.size == (size, size)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 5.0, "the generated image is blank"
    assert image.text["prompt"] == "a red apple"
    settings = json.loads(image.text["openhart"])
    assert settings["seed"] == 0 and settings["sampling"]["guidance_scale"] == 4.5
    assert settings["model"] == "hart-tiny", "the server's own paths stay private"
    status = browser.find_element("css selector", "#status").text
    assert f"{size}x{size}" in status and "seed 0" in status


def test_over_long_prompt_shows_the_error_in_the_page(server, browser):
    browser.get(server)
    _set_prompt(browser, "x" * (MAX_PROMPT_CHARS + 5))
    browser.find_element("css selector", "#generate").click()
    _wait(browser, lambda d: "too long" in d.find_element("tag name", "body").text, 60,
          "the prompt-length error")
    body = browser.find_element("tag name", "body").text
    assert f"at most {MAX_PROMPT_CHARS} are allowed" in body
    assert not _gallery_sources(browser)


def test_api_clients_cannot_bypass_the_limits(server):
    """The widgets cap the sliders, but Gradio's HTTP API takes any value: the server checks."""
    from gradio_client import Client

    client = Client(server, verbose=False)
    arguments = dict(prompt="a red apple", negative_prompt="", seed=0, guidance_scale=4.5, top_k=0,
                     top_p=0.0, smooth=True, head_steps=2, use_residual=True, head_temperature=1.0,
                     last_scale="official")
    # Gradio's slider check or openhart's own (tests/unit/test_web_limits.py), whichever runs first.
    with pytest.raises(Exception, match=f"greater than maximum value {MAX_IMAGES}|number of images must be"):
        client.predict(**dict(arguments, num_images=MAX_IMAGES + 1), api_name="/generate")
    with pytest.raises(Exception, match="greater than maximum value 20|guidance scale must be"):
        client.predict(**dict(arguments, num_images=1, guidance_scale=1e6), api_name="/generate")
    with pytest.raises(Exception, match="greater than maximum value|top-k must be between"):
        client.predict(**dict(arguments, num_images=1, top_k=10**6), api_name="/generate")
    # checks that only openhart makes (the widgets set no bound here)
    with pytest.raises(Exception, match="seed must be between 0 and"):
        client.predict(**dict(arguments, num_images=1, seed=2**63), api_name="/generate")
    with pytest.raises(Exception, match="prompt is too long"):
        client.predict(**dict(arguments, num_images=1, prompt="x" * 100), api_name="/generate")
    with pytest.raises(Exception, match="prompt is empty"):
        client.predict(**dict(arguments, num_images=1, prompt="   "), api_name="/generate")
    with pytest.raises(Exception, match="greater than maximum value 2|residual temperature must be"):
        client.predict(**dict(arguments, num_images=1, head_temperature=5.0), api_name="/generate")
    gallery, status = client.predict(**dict(arguments, num_images=2), api_name="/generate")
    assert len(gallery) == 2 and "2 image(s)" in status
    # every rejection above reached the client as a message; none printed a traceback on the server
    assert "Traceback" not in server.log.read_text(), server.log.read_text()


def test_edit_tab_inpaints_a_region_painted_in_the_browser(server, browser, tmp_path):
    """Upload an image in the Edit tab, paint a stroke over it, regenerate under a prompt."""
    from selenium.webdriver.common.action_chains import ActionChains

    size = load_model(HART_TINY).config.image_size
    upload = tmp_path / "upload.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(upload)
    browser.get(server)
    tab = _wait(browser, lambda d: [t for t in d.find_elements("css selector", "button[role=tab]")
                                    if t.text.strip() == "Edit"], 60, "the Edit tab")
    tab[0].click()
    file_input = _wait(browser, lambda d: d.find_element("css selector", "#edit-image input[type=file]"), 30,
                       "the image upload")
    file_input.send_keys(str(upload))
    canvas = _wait(browser, lambda d: d.find_element("css selector", "#edit-image canvas"), 30, "the canvas")
    time.sleep(1)  # the editor lays the image out on the canvas
    ActionChains(browser).move_to_element_with_offset(canvas, -20, -20).click_and_hold() \
        .move_by_offset(30, 10).move_by_offset(10, 30).release().perform()
    browser.find_element("css selector", "#edit-prompt textarea").send_keys("a red apple")
    browser.find_element("css selector", "#edit").click()
    _wait(browser, lambda d: "inpaint:" in d.find_element("css selector", "#edit-status").text,
          GENERATE_TIMEOUT_S, "the edit's status line")
    status = browser.find_element("css selector", "#edit-status").text
    assert "mask is empty" not in status, "the painted stroke reached the server as the mask"
    sources = [img.get_attribute("src") for img in browser.find_elements("css selector", "#edit-gallery img")
               if img.get_attribute("src")]
    assert sources
    browser.save_screenshot(str(ARTIFACTS / "web-ui-edit.png"))
    with urllib.request.urlopen(sources[0], timeout=30) as response:
        image = Image.open(io.BytesIO(response.read()))
    assert image.size == (size, size) and image.text["prompt"] == "a red apple"
    edit = json.loads(image.text["openhart"])["edit"]
    assert edit["kind"] == "inpaint" and 0 < edit["mask_coverage"] < 1
    assert "Traceback" not in server.log.read_text(), server.log.read_text()
