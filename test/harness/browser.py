"""A real browser for the login tests: Debian's Chromium, headless, driven by Selenium.

Selenium is given ``/usr/bin/chromedriver`` and ``/usr/bin/chromium``
explicitly, so Selenium Manager never downloads a driver or a browser
(``SE_OFFLINE=true`` as well). Chromium runs with a fresh profile and without
any of its background traffic (this machine's network is closed); host names
are mapped onto loopback ports with ``--host-resolver-rules``, so a page of
``https://matrix.example.com/auth/`` is served by the test's proxy on
``127.0.0.1:<port>`` with MAS's real ``public_base``. The test CA is not in
Chromium's store: the session accepts the test's certificates
(``acceptInsecureCerts``); the programs under test (MAS, Python clients) verify
them against the CA.

:class:`Browser` keeps Chromium's network log (the DevTools ``Network``
events): :meth:`Browser.responses` lists every response with its status,
:meth:`Browser.failed` the requests that failed or answered >= 400, and
:meth:`Browser.step` turns any failure inside a step into one message naming
the step, the page (URL, title, visible text) and the failed requests.
Screenshots go to the browser's ``artifacts`` directory and, when
``MAS_TEST_ARTIFACTS`` is set, are copied there too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from harness.util import require_binary

CHROMIUM = ("/usr/bin/chromium",)
CHROMEDRIVER = ("/usr/bin/chromedriver",)

#: Chromium's switches here: headless as root, and none of its own traffic to the closed network.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--window-size=1280,1000",
)


class StepFailed(AssertionError):
    """A browser step failed: the message names the step, the page and the failed requests."""


class Browser:
    """One headless Chromium.

    Args:
        workdir: its profile (``profile/``) and ``artifacts/`` (screenshots).
        host_rules: ``{"host[:port]": "127.0.0.1:port"}`` -- Chromium's ``MAP`` rules.
    """

    def __init__(self, workdir: Path, host_rules: dict[str, str] | None = None):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        chromium = require_binary("chromium", CHROMIUM)
        chromedriver = require_binary("chromedriver", CHROMEDRIVER)
        self.workdir = Path(workdir)
        self.artifacts = self.workdir / "artifacts"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self._profile = Path(tempfile.mkdtemp(prefix="profile-", dir=self.workdir))
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self._profile}")
        if host_rules:
            rules = ", ".join(f"MAP {host} {target}" for host, target in host_rules.items())
            options.add_argument(f"--host-resolver-rules={rules}, EXCLUDE localhost")
        options.accept_insecure_certs = True
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download
        service = Service(executable_path=chromedriver, log_output=str(self.workdir / "chromedriver.log"))
        self.driver = webdriver.Chrome(options=options, service=service)
        self.driver.set_page_load_timeout(60)
        self._events: list[dict] = []
        #: fields whose value had to be set like autofill does (see :meth:`fill`)
        self.autofilled: list[str] = []

    # ------------------------------------------------------------ network log

    def _drain(self) -> None:
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method", "").startswith("Network."):
                self._events.append(message)

    def mark(self) -> int:
        """A position in the network log: :meth:`responses` and :meth:`failed` can start there."""
        self._drain()
        return len(self._events)

    def responses(self, since: int = 0) -> list[dict]:
        """Every response since ``since``: ``{url, status, type, location}`` (redirects included, oldest first)."""
        self._drain()
        out = []
        for event in self._events[since:]:
            params = event["params"]
            if event["method"] == "Network.responseReceived":
                response = params["response"]
                out.append({"url": response["url"], "status": response["status"], "type": params.get("type")})
            elif event["method"] == "Network.requestWillBeSent" and params.get("redirectResponse"):
                response = params["redirectResponse"]
                location = {k.lower(): v for k, v in response.get("headers", {}).items()}.get("location")
                out.append(
                    {"url": response["url"], "status": response["status"], "type": "redirect", "location": location}
                )
        return out

    def redirects_to(self, prefix: str, since: int = 0) -> list[str]:
        """Every ``Location`` starting with ``prefix`` a response since ``since`` sent (e.g. an app's own URI scheme)."""
        self._drain()
        found = []
        for event in self._events[since:]:
            if event["method"] != "Network.responseReceivedExtraInfo":
                continue
            headers = {k.lower(): v for k, v in event["params"].get("headers", {}).items()}
            location = headers.get("location", "")
            if location.startswith(prefix):
                found.append(location)
        return found

    def failed(self, since: int = 0, prefix: str = "") -> list[str]:
        """Requests since ``since`` (URLs starting with ``prefix``) that failed or answered >= 400: ``"<status|error> <url>"``."""
        self._drain()
        urls: dict[str, str] = {}
        out = []
        for event in self._events[since:]:
            params = event["params"]
            if event["method"] == "Network.requestWillBeSent":
                urls[params["requestId"]] = params["request"]["url"]
            elif event["method"] == "Network.responseReceived":
                response = params["response"]
                if response["status"] >= 400 and response["url"].startswith(prefix):
                    out.append(f"{response['status']} {response['url']}")
            elif event["method"] == "Network.loadingFailed":
                url = urls.get(params["requestId"], "?")
                if url.startswith(prefix) and not params.get("canceled"):
                    out.append(f"{params.get('errorText')} {url}")
        return out

    # ------------------------------------------------------------------ pages

    def clear_cookies(self) -> None:
        """Forget every cookie of every site (a new person at the same browser)."""
        self.driver.execute_cdp_cmd("Network.clearBrowserCookies", {})

    def go(self, url: str) -> None:
        self.driver.get(url)

    @property
    def url(self) -> str:
        return self.driver.current_url

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.TAG_NAME, "body").text

    def wait(self, condition, timeout: float = 20, what: str = "the page"):
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout).until(condition, message=f"waited {timeout}s for {what}")

    def wait_css(self, selector: str, timeout: float = 20):
        """The first element matching the CSS ``selector``, once it is there and visible."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        return self.wait(
            ec.visibility_of_element_located((By.CSS_SELECTOR, selector)), timeout, f"an element {selector!r}"
        )

    def wait_url(self, prefix: str, timeout: float = 30) -> str:
        self.wait(lambda d: d.current_url.startswith(prefix), timeout, f"a page under {prefix}")
        return self.url

    def fill(self, selector: str, value: str, submit: bool = False) -> None:
        """Type ``value`` into the field ``selector``; ``submit`` presses Enter in it.

        Some of MAS's React fields (the account page's "Add email", Compound's EditInPlace) drop
        the keystrokes WebDriver sends in headless Chromium (no character lands, not even through
        DevTools' ``Input.insertText``): there the value is set the way autofill does (the input's
        value setter, then an ``input`` event), recorded in :attr:`autofilled`."""
        from selenium.webdriver.common.keys import Keys

        element = self.wait_css(selector)
        element.clear()
        element.send_keys(value)
        if element.get_attribute("value") != value:
            self.driver.execute_script(
                "const setter = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set;"
                "setter.call(arguments[0], arguments[1]);"
                "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));"
                "arguments[0].dispatchEvent(new Event('change', {bubbles: true}));",
                element,
                value,
            )
            self.autofilled.append(selector)
        if element.get_attribute("value") != value:
            raise AssertionError(f"the field {selector!r} does not keep {value!r} ({element.get_attribute('value')!r})")
        if submit:
            element.send_keys(Keys.ENTER)

    def click(self, selector: str) -> None:
        """Click the element ``selector`` (see :meth:`_click`)."""
        self._click(self.wait_css(selector))

    def _click(self, element) -> None:
        """The element's click event, as a person's click fires it (``HTMLElement.click()``: a link
        navigates, a submit button submits its form). WebDriver's native click was seen to start
        nothing on MAS's provider link and on the React account page's buttons in headless Chromium."""
        self.driver.execute_script("arguments[0].click();", element)

    def click_text(self, text: str, tag: str = "*") -> None:
        """Click the first visible button or link whose text contains ``text``."""
        from selenium.webdriver.common.by import By

        xpath = (
            f"//{tag}[(self::button or self::a or @type='submit') and contains(normalize-space(.), {json.dumps(text)})]"
        )
        self.wait(lambda d: any(e.is_displayed() for e in d.find_elements(By.XPATH, xpath)), 20, f"a button {text!r}")
        self._click(next(e for e in self.driver.find_elements(By.XPATH, xpath) if e.is_displayed()))

    def screenshot(self, name: str) -> Path:
        """Save a PNG of the page as ``artifacts/<name>.png`` (and under ``$MAS_TEST_ARTIFACTS``)."""
        path = self.artifacts / f"{name}.png"
        self.driver.save_screenshot(str(path))
        extra = os.environ.get("MAS_TEST_ARTIFACTS")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, Path(extra) / path.name)
        return path

    @contextlib.contextmanager
    def step(self, name: str):
        """Run a step of a person's login; any failure becomes :class:`StepFailed` naming the step and the page."""
        since = self.mark()
        try:
            yield
        except StepFailed:
            raise
        except Exception as exc:
            raise StepFailed(
                f"browser step {name!r} failed: {type(exc).__name__}: {exc}\n{self.describe(since)}"
            ) from exc

    def describe(self, since: int = 0) -> str:
        """The page (URL, title, visible text) and the requests that failed since ``since``."""
        try:
            title, url, text = self.driver.title, self.url, self.text()[:1500]
        except Exception as exc:
            title, url, text = "?", "?", f"(page unreadable: {exc})"
        failed = self.failed(since)
        shot = ""
        with contextlib.suppress(Exception):
            shot = f"\nscreenshot: {self.screenshot('failure-' + str(len(list(self.artifacts.glob('failure-*')))))}"
        return f"page: {url} (title {title!r})\nfailed requests: {failed or 'none'}\n--- page text ---\n{text}{shot}"

    def quit(self) -> None:
        with contextlib.suppress(Exception):
            self.driver.quit()
        shutil.rmtree(self._profile, ignore_errors=True)
