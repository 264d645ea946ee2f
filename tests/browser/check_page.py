"""Drives `llava serve`'s chat page in a headless Chromium, as a person would: upload an image, ask, read the answer.

    python tests/browser/check_page.py URL IMAGE QUESTION SCREENSHOT.png

URL is a running server's page. The answer, as the page shows it once it stops growing, is printed on the last line
of stdout (a JSON string); the screenshot is saved. Uses Debian's `chromium` and `chromium-driver` through Selenium
(nothing is downloaded). Run by `tests/test_serve_page.py`; also how the README's screenshot is taken.
"""

import json
import shutil
import sys
import time

from selenium import webdriver
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


def check_page(url: str, image: str, question: str, screenshot: str, timeout: float = 120) -> str:
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
        # Streamed: the answer is complete once it has not changed for a while.
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
    print(json.dumps(check_page(*sys.argv[1:5])))
