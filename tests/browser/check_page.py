"""Drives `llava serve`'s chat page in a headless Chromium, as a person would: upload an image, ask, read the answer.

    python tests/browser/check_page.py URL IMAGE QUESTION SCREENSHOT.png [EXPECTED]

URL is a running server's page. The answer the page shows is printed on the last line of stdout (a JSON string) and
the screenshot is saved. With EXPECTED (what the test computed with `llava chat`), the answer is read once it says
exactly that (white space folded), or when the time is up: the page shows no sign that a streamed answer is over, and
a pause between tokens on a busy machine must not read as the end. Without it (taking the README's screenshot), the
answer is read once it has not changed for 2 s. Uses Debian's `chromium` and `chromium-driver` through Selenium
(nothing is downloaded). Run by `tests/test_serve_page.py`; also how the README's screenshot is taken.
"""

import contextlib
import json
import shutil
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,820"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


def answer_text(driver: webdriver.Chrome) -> str:
    messages = driver.find_elements(By.CSS_SELECTOR, "#conversation .message.bot, #conversation [data-testid='bot']")
    return messages[-1].text.strip() if messages else ""


def folded(text: str) -> str:
    return " ".join(text.split())


def check_page(
    url: str, image: str, question: str, screenshot: str, expected: str | None = None, timeout: float = 120
) -> str:
    driver = browser()
    try:
        driver.get(url)
        wait = WebDriverWait(driver, timeout)
        wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#ask textarea")))
        driver.find_element(By.CSS_SELECTOR, "input[type='file']").send_keys(image)
        wait.until(
            expected_conditions.presence_of_element_located(
                (By.CSS_SELECTOR, "img[src*='file='], img[src*='gradio_api/file']")
            )
        )
        driver.find_element(By.CSS_SELECTOR, "#ask textarea").send_keys(question)
        driver.find_element(By.CSS_SELECTOR, "#send").click()
        wait.until(lambda _: answer_text(driver))
        if expected is not None:
            with contextlib.suppress(TimeoutException):  # then the answer shown is returned, and the test says how
                wait.until(lambda _: folded(answer_text(driver)) == folded(expected))
            last = answer_text(driver)
        else:
            last, since = answer_text(driver), time.monotonic()
            while time.monotonic() - since < 2:
                time.sleep(0.2)
                if (now := answer_text(driver)) != last:
                    last, since = now, time.monotonic()
        driver.save_screenshot(screenshot)
        return last
    finally:
        driver.quit()


if __name__ == "__main__":
    print(json.dumps(check_page(*sys.argv[1:6])))
