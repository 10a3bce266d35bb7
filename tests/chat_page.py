"""The chat page as a user drives it: a selenium WebDriver on `tandem serve`'s `/`."""

from __future__ import annotations

import time

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

SETTING_IDS = {"temperature": "temperature", "top_p": "top-p", "max_tokens": "max-tokens", "seed": "seed",
               "system": "system-prompt"}


class ChatPage:
    def __init__(self, driver, url: str):
        self.driver = driver
        self.url = url

    def open(self) -> ChatPage:
        self.driver.get(self.url)
        self.wait(lambda d: d.execute_script("return Boolean(window.tandemChat && window.TandemMarkdown)"),
                  what="the page's scripts to load")
        self.driver.execute_script("localStorage.clear()")
        return self

    def wait(self, condition, timeout: float = 60, what: str = "the page"):
        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(
            condition, message=f"timed out after {timeout}s waiting for {what}")

    def find(self, css: str):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def settings(self, **values) -> None:
        """Opens the settings panel and types each value (temperature=, top_p=, max_tokens=, seed=, system=)."""
        if not self.find("#settings").is_displayed():
            self.find("#settings-button").click()
        for name, value in values.items():
            field = self.find("#" + SETTING_IDS[name])
            field.clear()
            field.send_keys(str(value))

    def send(self, text: str) -> None:
        answers = len(self.answers())
        box = self.find("#prompt")
        box.send_keys(text)
        box.send_keys(Keys.ENTER)
        self.wait(lambda d: len(self.answers()) == answers + 1, what="the answer to start")

    def answers(self) -> list:
        return self.driver.find_elements(By.CSS_SELECTOR, "#messages article.assistant")

    def last_answer(self):
        return self.answers()[-1]

    def wait_finished(self, timeout: float = 120):
        """Waits until the send button is back (the answer ended, stopped or failed)."""
        self.wait(lambda d: d.execute_script("return document.body.dataset.busy") == "false",
                  timeout, "the answer to end")
        return self.last_answer()

    def wait_tokens(self, at_least: int, timeout: float = 60) -> None:
        self.wait(lambda d: sum(self.token_counts().values()) >= at_least, timeout,
                  f"{at_least} tokens on the page")

    def token_counts(self, answer=None) -> dict[str, int]:
        """Tokens per source, as the shaded spans of an answer (default: the last) declare them.

        Counted in one script run: the page re-renders a streaming answer, so spans come and go.
        """
        return self.driver.execute_script("""
            const answers = document.querySelectorAll("#messages article.assistant");
            const answer = arguments[0] || answers[answers.length - 1];
            const counts = {};
            for (const span of answer ? answer.querySelectorAll("span[data-tokens]") : []) {
              counts[span.dataset.source] = (counts[span.dataset.source] || 0) + Number(span.dataset.tokens);
            }
            return counts;""", answer)

    def history(self) -> list[dict]:
        return self.driver.execute_script("return window.tandemChat.history")

    def cloud_state(self) -> str:
        return self.find("#cloud-state").get_attribute("data-state")

    def wait_cloud_state(self, state: str, timeout: float = 30) -> None:
        self.wait(lambda d: self.cloud_state() == state, timeout, f"the cloud state to read {state!r}")

    def screenshot(self, path) -> None:
        time.sleep(0.2)  # let the last frame paint
        self.driver.save_screenshot(str(path))
