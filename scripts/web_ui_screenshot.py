"""Write docs/web-ui.png: a real screenshot of `openhart serve` with the shipped model.

Starts the server on a free loopback port, drives Debian's headless Chromium (selenium), types a
prompt, clicks Generate, waits for the gallery and saves the page. With --edit, the Edit tab
instead: uploads an emoji, paints a stroke over its eyes, regenerates them under the prompt.
Usage: .venv/bin/python scripts/web_ui_screenshot.py [--prompt "red apple"] [--out docs/web-ui.png]
       .venv/bin/python scripts/web_ui_screenshot.py --edit --prompt "smiling face with sunglasses" \
           --out docs/web-ui-edit.png
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
    parser.add_argument("--edit", action="store_true", help="the Edit tab (needs fonts-noto-color-emoji)")
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
        if args.edit:
            edit_tab(driver, wait, args)
            return
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


def edit_tab(driver, wait, args) -> None:
    import tempfile
    from pathlib import Path

    from selenium.webdriver.common.action_chains import ActionChains

    from openhart.data.emoji import FONT_SIZE, find_font, render
    from PIL import ImageFont

    upload = Path(tempfile.mkdtemp()) / "grinning-face.png"
    render("😀", ImageFont.truetype(str(find_font()), FONT_SIZE)).resize((64, 64)).save(upload)
    tab = wait.until(lambda d: [t for t in d.find_elements("css selector", "button[role=tab]")
                                if t.text.strip() == "Edit"])
    tab[0].click()
    wait.until(lambda d: d.find_element("css selector", "#edit-image input[type=file]")).send_keys(str(upload))
    canvas = wait.until(lambda d: d.find_element("css selector", "#edit-image canvas"))
    time.sleep(1.5)
    ActionChains(driver).move_to_element_with_offset(canvas, -90, -60).click_and_hold() \
        .move_by_offset(180, 0).release().perform()
    driver.find_element("css selector", "#edit-prompt textarea").send_keys(args.prompt)
    seed = driver.find_element("css selector", "#edit-seed input")
    seed.clear()
    seed.send_keys(str(args.seed))
    driver.find_element("css selector", "#edit").click()
    wait.until(lambda d: "inpaint:" in d.find_element("css selector", "#edit-status").text)
    driver.set_window_size(1400, 1240)
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(1.0)
    driver.save_screenshot(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
