"""The page of `medrag serve` driven as a person uses it, in headless Chromium (Selenium).

Used by the browser test and by `benchmarks/serve_load.py --browser` (page load to first answer,
and the README's screenshot). Needs Debian's `chromium` and `chromium-driver` (what `.ci/run`
installs) and `pip install selenium` (the dev extra); nothing is downloaded: Selenium is pointed
at those binaries.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.serve.load import Question, ask

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def browser_available() -> str | None:
    """None when the browser test can run here, else what is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file() and not shutil.which(Path(p).name)]
    if missing:
        return f"missing {', '.join(missing)}: apt-get install chromium chromium-driver"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed: pip install 'medvlm-rag[dev]'"
    return None


def chromium(width: int = 1400, height: int = 1100) -> Any:
    """A headless Chromium under chromedriver, both from the system packages."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={width},{height}", "--hide-scrollbars", "--no-first-run"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})  # the page's errors, for the test to read
    return webdriver.Chrome(service=DriverService(executable_path=CHROMEDRIVER), options=options)


def cited_image_question(server: Any, questions: Sequence[Question]) -> Question:
    """The first closed image question the server answers with a citation: one whose link can be followed."""
    import httpx

    with httpx.Client() as client:
        for item in (q for q in questions if q.image):
            if ask(client, server, item).json().get("citations"):
                return item
    raise ValueError("no image question among these was answered with a citation")


@dataclass
class PageAnswer:
    text: str
    page_to_answer_s: float   # from navigation start to the first answer on screen
    ask_s: float              # from the click on Ask to the answer on screen


def ask_on_page(driver: Any, url: str, question: str, image: Path | None = None, options: tuple[str, ...] = (),
                compare: bool = False, timeout: float = 120) -> PageAnswer:
    """Open the page at `url`, upload `image`, type the question and options, click Ask, wait for the answer."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    driver.get(url)
    ask_button = wait.until(ec.element_to_be_clickable((By.ID, "ask")))   # enabled once /api/health says ready
    if image is not None:
        driver.find_element(By.ID, "image").send_keys(str(Path(image).resolve()))
        wait.until(ec.visibility_of_element_located((By.ID, "preview")))
    driver.find_element(By.ID, "question").send_keys(question)
    for i, option in enumerate(options):
        if i:
            driver.find_element(By.ID, "add-option").click()
        driver.find_elements(By.CSS_SELECTOR, "#options input")[i].send_keys(option)
    if compare:
        driver.find_element(By.ID, "compare").click()
    ask_button.click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-answered-at-ms"))
    body = driver.find_element(By.TAG_NAME, "body")
    if compare:
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#answer-bare .text"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#ranking li"))   # the retrieval panel, last to fill
    return PageAnswer(text=driver.find_element(By.CSS_SELECTOR, "#answer-rag .text").text,
                      page_to_answer_s=int(body.get_attribute("data-answered-at-ms")) / 1000,
                      ask_s=int(body.get_attribute("data-ask-ms")) / 1000)


def follow_first_citation(driver: Any, timeout: float = 10) -> dict[str, Any]:
    """Click the answer's first [n] link; the evidence card it names, whether it is highlighted and on screen."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    link = driver.find_element(By.CSS_SELECTOR, "#answer-rag a.cite")
    number = link.get_attribute("data-n")
    link.click()
    card = driver.find_element(By.ID, f"ev-{number}")
    in_view = ("const r = arguments[0].getBoundingClientRect();"
               "return r.top >= 0 && r.bottom <= window.innerHeight;")
    # the page scrolls smoothly: wait until the card has arrived
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(in_view, card))
    return {"number": int(number), "highlighted": "highlight" in card.get_attribute("class").split(),
            "in_view": bool(driver.execute_script(in_view, card)), "text": card.text}
