"""Write docs/web-ui.png: a real screenshot of `openhart serve` with the shipped model.

Starts the server on a free loopback port, drives Debian's headless Chromium (selenium), types a
prompt, clicks Generate, waits for the gallery and saves the page.
Usage: .venv/bin/python scripts/web_ui_screenshot.py [--prompt "red apple"] [--out docs/web-ui.png]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="red apple")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/web-ui.png")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "openhart", "serve", "--port", str(port), "--quiet"])
    url = f"http://127.0.0.1:{port}/"
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(flag)
    driver = None
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                time.sleep(0.5)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        driver.get(url)
        wait = WebDriverWait(driver, 120, poll_frequency=0.25)
        box = wait.until(lambda d: d.find_element("css selector", "#prompt textarea"))
        box.send_keys(args.prompt)
        seed = driver.find_element("css selector", "#seed input")
        seed.clear()
        seed.send_keys(str(args.seed))
        driver.find_element("css selector", "#generate").click()
        wait.until(lambda d: "image(s) of" in d.find_element("css selector", "#status").text)
        time.sleep(1.0)  # let the thumbnails paint
        driver.save_screenshot(args.out)
        print(f"wrote {args.out}")
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":
    main()
