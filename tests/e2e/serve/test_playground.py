"""The web playground in headless Chromium against ``seedx serve``: chat with an uploaded image
over two turns, generation with live previews then the final image, edit, variations, and an API
key (401 shown as the API wrote it, then accepted). Screenshots are saved under the test's temp dir
and copied to ``$SEEDX_ARTIFACTS_DIR`` when that is set.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.serve.browser import Browser, find_chromium
from tests.e2e.serve.conftest import KeyedGateway, Served, save_artifact
from tests.tools import missing_tool

SIDE = 256  # small images keep the CPU demo quick


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = find_chromium()
    if executable is None:
        missing_tool("no chromium (apt-get install chromium, or set SEEDX_CHROMIUM)")
    page = Browser(executable)
    try:
        yield page
    finally:
        page.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(autouse=True)
def _no_page_errors(browser: Browser) -> Iterator[None]:
    browser.errors.clear()
    yield
    assert browser.errors == [], "the page threw"


def screenshot(browser: Browser, shots: Path, name: str) -> None:
    save_artifact(browser.screenshot(shots / f"playground-{name}.png"))


def open_tab(browser: Browser, base_url: str, tab: str) -> None:
    if not browser.eval("location.href").startswith(base_url):
        browser.goto(base_url + "/")
    browser.click(f'#tabs [data-tab="{tab}"]')
    browser.wait_for(f"document.querySelector('#tab-{tab}').dataset.active === 'true'")


def set_options(browser: Browser, form: str, **values: object) -> None:
    for name, value in values.items():
        browser.fill(f'#{form} [name="{name}"]', str(value))


def wait_final(browser: Browser, results: str, count: int = 1, timeout_s: float = 120) -> None:
    """Waits until ``count`` figures are final and their images decoded at the asked size."""
    browser.wait_for(
        f"[...document.querySelectorAll('#{results} figure[data-final=\"true\"] img')]"
        f".filter((img) => img.complete && img.naturalWidth === {SIDE}).length >= {count}",
        timeout_s=timeout_s,
    )


def error_text(browser: Browser) -> str:
    return str(browser.eval("document.querySelector('#error').hidden ? '' : "
                            "document.querySelector('#error').textContent"))  # fmt: skip


def test_chat_with_an_uploaded_image(
    served: Served, browser: Browser, photo: Path, shots: Path
) -> None:
    open_tab(browser, served.base_url, "chat")
    browser.wait_for("document.querySelectorAll('#chat-model option').length > 1")
    assert browser.eval("[...document.querySelectorAll('#chat-model option')].map(o => o.value)")[
        1:
    ] == ["seed-x-edit", "seed-x-i"]
    browser.set_files("#chat-image", photo)
    browser.fill("#chat-text", "What is in this picture?")
    browser.fill("#chat-max-tokens", "24")
    browser.eval("document.querySelector('#chat-images-out').checked = false")
    browser.click("#chat-send")
    browser.wait_for("document.querySelectorAll('.msg.assistant .meta').length === 1", timeout_s=90)
    assert error_text(browser) == ""
    # the uploaded picture is shown in the user's turn, decoded at its own size
    assert browser.eval("document.querySelector('.msg.user .figure img').naturalWidth") == 640
    first = browser.eval("document.querySelector('.msg.assistant .meta').textContent")
    assert re.search(r"finish: (stop|length) · \d+ prompt \+ \d+ completion tokens", first)

    # a second turn carries the first (image included) as history
    browser.fill("#chat-text", "And what colour is the circle?")
    browser.click("#chat-send")
    browser.wait_for("document.querySelectorAll('.msg.assistant .meta').length === 2", timeout_s=90)
    second = browser.eval("document.querySelectorAll('.msg.assistant .meta')[1].textContent")
    prompt_tokens = [int(re.search(r"(\d+) prompt", t)[1]) for t in (first, second)]  # type: ignore[index]
    assert prompt_tokens[1] > prompt_tokens[0] + 24
    screenshot(browser, shots, "chat")


def test_chat_json_answer_with_token_logprobs(
    served: Served, browser: Browser, shots: Path
) -> None:
    """A JSON-object answer (vLLM's grammar) with each token's probability under the answer."""
    open_tab(browser, served.base_url, "chat")
    browser.wait_for("document.querySelectorAll('#chat-model option').length > 1")
    browser.eval("document.querySelector('#chat-reset').click()")
    browser.eval("document.querySelector('#chat-format').value = 'json_object'")
    browser.eval("document.querySelector('#chat-logprobs').checked = true")
    browser.fill("#chat-text", "Describe the picture as JSON.")
    browser.fill("#chat-max-tokens", "16")
    browser.click("#chat-send")
    browser.wait_for("document.querySelectorAll('.msg.assistant .meta').length === 1", timeout_s=90)
    assert error_text(browser) == ""
    answer = browser.eval("document.querySelector('.msg.assistant .text').textContent")
    assert str(answer).startswith("{")  # the grammar opens an object (16 tokens may cut it)
    rows = browser.eval("document.querySelectorAll('.msg.assistant .logprobs tr').length")
    summary = browser.eval("document.querySelector('.msg.assistant .logprobs summary').textContent")
    assert summary == f"{rows} token logprobs"
    assert 1 <= rows <= 16
    screenshot(browser, shots, "chat-json-logprobs")


def test_generate_shows_previews_then_the_final_image(
    served: Served, browser: Browser, shots: Path
) -> None:
    open_tab(browser, served.base_url, "generate")
    browser.fill("#generate-prompt", "a lighthouse at dusk")
    # Count 2: n=2 on generations was a 500 (issue 21, item 1)
    set_options(browser, "generate-form", size=f"{SIDE}x{SIDE}", steps=12, seed=3, n=2)
    browser.eval(
        """(() => {
        window.__captions = [];
        const results = document.querySelector('#generate-results');
        new MutationObserver(() => {
          const caption = results.querySelector('figcaption')?.textContent;
          if (caption && caption !== window.__captions.at(-1)) window.__captions.push(caption);
        }).observe(results, {subtree: true, childList: true, characterData: true,
                             attributes: true});
        })()"""
    )
    browser.click("#generate-form button[type=submit]")
    browser.wait_for("window.__captions.some((c) => c.startsWith('preview'))", every_s=0.02)
    screenshot(browser, shots, "generate-preview")
    wait_final(browser, "generate-results", count=2)
    captions = browser.eval("window.__captions")
    assert captions[-1] == "final", captions
    assert len(captions) >= 2, captions
    assert all(c.startswith("preview") for c in captions[:-1]), captions
    assert error_text(browser) == ""
    screenshot(browser, shots, "generate-final")


def test_edit(served: Served, browser: Browser, photo: Path, shots: Path) -> None:
    open_tab(browser, served.base_url, "edit")
    browser.set_files("#edit-image", photo)
    browser.fill("#edit-prompt", "make the circle green")
    set_options(browser, "edit-form", size=f"{SIDE}x{SIDE}", steps=6, n=2)  # issue 21, item 1
    browser.click("#edit-form button[type=submit]")
    wait_final(browser, "edit-results", count=2)
    assert error_text(browser) == ""
    screenshot(browser, shots, "edit")


def test_variations(served: Served, browser: Browser, photo: Path, shots: Path) -> None:
    open_tab(browser, served.base_url, "variation")
    browser.set_files("#variation-image", photo)
    set_options(browser, "variation-form", size=f"{SIDE}x{SIDE}", steps=4, n=2)
    browser.click("#variation-form button[type=submit]")
    wait_final(browser, "variation-results", count=2)
    assert error_text(browser) == ""
    screenshot(browser, shots, "variations")


def test_api_key_required(keyed_gateway: KeyedGateway, browser: Browser, shots: Path) -> None:
    """Without a key the page shows the API's 401 as it is; with the key everything works."""
    url = keyed_gateway.base_url
    refused = httpx.get(f"{url}/v1/models", timeout=10)
    assert refused.status_code == 401
    message = refused.json()["error"]["message"]
    browser.goto(url + "/")
    browser.wait_for("!document.querySelector('#error').hidden")
    assert error_text(browser).startswith("401 ")
    assert message in error_text(browser)
    screenshot(browser, shots, "api-key-401")

    browser.fill("#api-key", keyed_gateway.key)  # 'change': stored, models reloaded
    browser.wait_for("document.querySelectorAll('#chat-model option').length > 1")
    assert error_text(browser) == ""
    open_tab(browser, url, "generate")
    browser.fill("#generate-prompt", "a red cube")
    set_options(browser, "generate-form", size=f"{SIDE}x{SIDE}", steps=4)
    browser.click("#generate-form button[type=submit]")
    wait_final(browser, "generate-results")

    wrong = "sk-not-the-key-000000"
    refused = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {wrong}"})
    browser.fill("#api-key", wrong)
    browser.click("#generate-form button[type=submit]")
    browser.wait_for("!document.querySelector('#error').hidden")
    assert error_text(browser).startswith("401 ")
    assert refused.json()["error"]["message"] in error_text(browser)
    screenshot(browser, shots, "api-key-wrong")
