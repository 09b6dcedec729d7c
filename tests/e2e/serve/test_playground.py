"""The web playground in headless Chromium against ``seedx serve`` (the tiny demo):

* the demo banner and demo-sized defaults (``/v1/models`` says ``demo: true``), no favicon 404;
* chat with an uploaded image over two turns, a JSON answer with token logprobs, a chat that
  must draw (the picture inline, sent back unchanged in the next turn), a 5,000-character
  unbroken answer that wraps instead of widening the page;
* per-tab busy state: a chat held in flight does not block a generation;
* generation with live previews (scaled up, pixelated) then the final image, edit, variations;
* an API key: the 401 shown as the API wrote it, the model list reloaded as the key is typed,
  and a refused chat turn taken back out of the conversation with its text restored.

Screenshots go to ``tests/.artifacts/playground/`` (ignored by git) and are copied to
``$SEEDX_ARTIFACTS_DIR`` when that is set.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.serve.browser import Browser, find_chromium
from tests.e2e.serve.conftest import ROOT, KeyedGateway, Served, save_artifact
from tests.tools import missing_tool

SIDE = 256  # small images keep the CPU demo quick
DEMO_STEPS = "8"  # the playground's demo default (server/playground/index.html, data-demo)
LONG = 5000  # characters of an unbroken "word" that must not widen the page
CHAT = "*/v1/chat/completions"


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
def shots() -> Path:
    folder = ROOT / "tests" / ".artifacts" / "playground"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


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
        ".filter((img) => !img.classList.contains('preview'))"
        f".filter((img) => img.complete && img.naturalWidth === {SIDE}).length >= {count}",
        timeout_s=timeout_s,
    )


def error_text(browser: Browser, tab: str | None = None) -> str:
    """The error the page shows: a tab's own box, or the page's (the model list) without one."""
    box = f"document.querySelector('{f'#tab-{tab} .error' if tab else '#error'}')"
    return str(browser.eval(f"{box}.hidden ? '' : {box}.textContent"))


def wait_error(browser: Browser, tab: str | None = None) -> str:
    box = f"#tab-{tab} .error" if tab else "#error"
    browser.wait_for(f"!document.querySelector('{box}').hidden", timeout_s=60)
    return error_text(browser, tab)


def new_chat(browser: Browser, max_tokens: str = "", *, require: bool = False) -> None:
    browser.eval("document.querySelector('#chat-reset').click()")
    browser.fill("#chat-max-tokens", max_tokens)
    browser.eval(f"document.querySelector('#chat-require-image').checked = {json.dumps(require)}")


def answers(browser: Browser) -> int:
    return int(browser.eval("document.querySelectorAll('.msg.assistant .meta').length"))


def wait_answers(browser: Browser, count: int) -> None:
    browser.wait_for(
        f"document.querySelectorAll('.msg.assistant .meta').length === {count}", timeout_s=90
    )


def chat_idle(browser: Browser) -> bool:
    return bool(browser.eval("document.querySelector('#tab-chat .status').hidden"))


def test_demo_banner_small_defaults_and_no_404(
    served: Served, browser: Browser, shots: Path
) -> None:
    """``seedx serve`` without ``--model``: /v1/models says demo, the page says so in a banner
    and starts from small sizes and steps; the page loads without a single failed request."""
    cards = httpx.get(f"{served.base_url}/v1/models", timeout=10).json()["data"]
    assert cards
    assert all(card["demo"] is True for card in cards)
    browser.failed.clear()
    browser.goto(served.base_url + "/")
    browser.wait_for("!document.querySelector('#demo-banner').hidden")
    assert "random" in browser.eval("document.querySelector('#demo-banner').textContent")
    sizes = browser.eval("[...document.querySelectorAll('[name=size]')].map((el) => el.value)")
    steps = browser.eval("[...document.querySelectorAll('[name=steps]')].map((el) => el.value)")
    assert sizes == [f"{SIDE}x{SIDE}"] * 3
    assert steps == [DEMO_STEPS] * 3
    assert browser.eval("document.querySelector('#chat-image-size').value") == f"{SIDE}x{SIDE}"
    assert browser.eval("document.querySelector('#chat-image-steps').value") == DEMO_STEPS
    assert int(browser.eval("document.querySelector('#chat-max-tokens').value")) >= 66
    # the icon the page links decodes (a broken one would be a request that failed)
    icon = browser.eval(
        """new Promise((ok) => { const img = new Image();
           img.onload = () => ok(img.naturalWidth); img.onerror = () => ok(0);
           img.src = document.querySelector('link[rel=icon]').href; })"""
    )
    assert icon > 0
    browser.eval("new Promise((ok) => setTimeout(ok, 500))")  # late requests (favicon) land
    assert browser.failed == [], "requests failed (a favicon 404?)"
    screenshot(browser, shots, "demo")


def test_chat_with_an_uploaded_image(
    served: Served, browser: Browser, photo: Path, shots: Path
) -> None:
    open_tab(browser, served.base_url, "chat")
    browser.wait_for("document.querySelectorAll('#chat-model option').length > 1")
    assert browser.eval("[...document.querySelectorAll('#chat-model option')].map(o => o.value)")[
        1:
    ] == ["seed-x-edit", "seed-x-i"]
    new_chat(browser, "24")
    browser.set_files("#chat-image", photo)
    browser.fill("#chat-text", "What is in this picture?")
    browser.eval("document.querySelector('#chat-images-out').checked = false")
    browser.click("#chat-send")
    wait_answers(browser, 1)
    assert error_text(browser, "chat") == ""
    # the uploaded picture is shown in the user's turn, decoded at its own size
    assert browser.eval("document.querySelector('.msg.user .figure img').naturalWidth") == 640
    first = browser.eval("document.querySelector('.msg.assistant .meta').textContent")
    assert re.search(r"finish: (stop|length) · \d+ prompt \+ \d+ completion tokens", first)

    # a second turn carries the first (image included) as history
    browser.fill("#chat-text", "And what colour is the circle?")
    browser.click("#chat-send")
    wait_answers(browser, 2)
    second = browser.eval("document.querySelectorAll('.msg.assistant .meta')[1].textContent")
    prompt_tokens = [int(re.search(r"(\d+) prompt", t)[1]) for t in (first, second)]  # type: ignore[index]
    assert prompt_tokens[1] > prompt_tokens[0] + 24
    browser.eval("document.querySelector('#chat-images-out').checked = true")
    screenshot(browser, shots, "chat")


def test_chat_json_answer_with_token_logprobs(
    served: Served, browser: Browser, shots: Path
) -> None:
    """A JSON-object answer (vLLM's grammar) with each token's probability under the answer."""
    open_tab(browser, served.base_url, "chat")
    browser.wait_for("document.querySelectorAll('#chat-model option').length > 1")
    new_chat(browser, "16")
    browser.eval("document.querySelector('#chat-format').value = 'json_object'")
    browser.eval("document.querySelector('#chat-logprobs').checked = true")
    browser.fill("#chat-text", "Describe the picture as JSON.")
    browser.click("#chat-send")
    wait_answers(browser, 1)
    assert error_text(browser, "chat") == ""
    answer = browser.eval("document.querySelector('.msg.assistant .text').textContent")
    assert str(answer).startswith("{")  # the grammar opens an object (16 tokens may cut it)
    rows = browser.eval("document.querySelectorAll('.msg.assistant .logprobs tr').length")
    summary = browser.eval("document.querySelector('.msg.assistant .logprobs summary').textContent")
    assert summary == f"{rows} token logprobs"
    assert 1 <= rows <= 16
    browser.eval("document.querySelector('#chat-format').value = 'text'")
    browser.eval("document.querySelector('#chat-logprobs').checked = false")
    screenshot(browser, shots, "chat-json-logprobs")


def test_chat_draws_when_an_image_is_required(
    served: Served, browser: Browser, shots: Path
) -> None:
    """The "require an image" box sends modalities text+image and image_options.require: the picture
    shows inline, and the next turn sends the assistant turn back with its image_url part."""
    open_tab(browser, served.base_url, "chat")
    # too few tokens for an image: the server's 400, and the turn is not left in the log
    new_chat(browser, "20", require=True)
    browser.fill("#chat-text", "Draw a cat on a sofa.")
    browser.click("#chat-send")
    error = wait_error(browser, "chat")
    assert error.startswith("400 "), error
    assert "max_tokens must be at least 66" in error, error
    assert browser.eval("document.querySelectorAll('#chat-log .msg').length") == 0
    assert browser.eval("document.querySelector('#chat-text').value") == "Draw a cat on a sofa."

    browser.fill("#chat-max-tokens", "80")
    browser.click("#chat-send")
    wait_answers(browser, 1)
    assert error_text(browser, "chat") == ""
    browser.wait_for(
        "[...document.querySelectorAll('.msg.assistant .figure img')]"
        f".some((img) => img.complete && img.naturalWidth === {SIDE})"
    )
    drawn = browser.eval("document.querySelector('.msg.assistant .figure img').src")
    assert drawn.startswith("data:image/png;base64,")
    meta = browser.eval("document.querySelector('.msg.assistant .meta').textContent")
    assert "1 image(s)" in meta
    screenshot(browser, shots, "chat-drawn")

    browser.intercept(CHAT)
    try:
        browser.fill("#chat-text", "Make it blue.")
        browser.click("#chat-send")
        held = browser.wait_paused()
        sent = json.loads(held["request"]["postData"])
        browser.resume(held)
    finally:
        browser.stop_intercepting()
    assert sent["modalities"] == ["text", "image"]
    assert sent["image_options"] == {"size": f"{SIDE}x{SIDE}", "steps": 8, "require": True}
    assistant = sent["messages"][1]
    assert assistant["role"] == "assistant"
    assert assistant["content"][-1] == {"type": "image_url", "image_url": {"url": drawn}}
    wait_answers(browser, 2)
    assert error_text(browser, "chat") == ""


def sse_answer(text: str, pieces: int = 5) -> bytes:
    """A streamed chat answer as the gateway writes it, ``text`` in ``pieces`` chunks."""

    def frame(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        chunk = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0,
                 "model": "seed-x-i", "choices": choices, "usage": usage}  # fmt: skip
        return f"data: {json.dumps(chunk)}\n\n"

    def delta(content: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}

    size = -(-len(text) // pieces)
    frames = [frame([delta({"role": "assistant", "content": ""})])]
    frames += [frame([delta({"content": text[i : i + size]})]) for i in range(0, len(text), size)]
    frames.append(frame([delta({}, "length")]))
    frames.append(frame([], {"prompt_tokens": 9, "completion_tokens": 2000, "total_tokens": 2009}))
    return ("".join(frames) + "data: [DONE]\n\n").encode()


def test_a_long_unbroken_answer_wraps(served: Served, browser: Browser, shots: Path) -> None:
    """5,000 characters without a break opportunity, asked and answered: the page stays as wide
    as the window. The answer is the gateway's stream format, served to the page's own fetch
    through the browser (the random model will not write one long word on demand), so the
    page's real parsing and rendering draw it."""
    open_tab(browser, served.base_url, "chat")
    new_chat(browser)
    browser.fill("#chat-text", "q" * LONG)
    browser.intercept(CHAT)
    try:
        browser.click("#chat-send")
        answer = sse_answer("a" * LONG)
        browser.fulfill(browser.wait_paused(), answer, content_type="text/event-stream")
        wait_answers(browser, 1)
    finally:
        browser.stop_intercepting()
    assert error_text(browser, "chat") == ""
    assert len(browser.eval("document.querySelector('.msg.assistant .text').textContent")) == LONG
    width = browser.eval("window.innerWidth")
    assert browser.eval("document.documentElement.scrollWidth") <= width
    for message in browser.eval(
        "[...document.querySelectorAll('.msg')].map((m) => [m.scrollWidth, m.clientWidth])"
    ):
        assert message[0] <= message[1], message
    screenshot(browser, shots, "long-answer")


def test_each_tab_is_busy_on_its_own(served: Served, browser: Browser, shots: Path) -> None:
    """A chat held in flight: the chat tab says it is waiting and its buttons are off, while
    Generate still works; the chat then finishes on its own."""
    open_tab(browser, served.base_url, "chat")
    new_chat(browser, "8")
    browser.fill("#chat-text", "Hello?")
    browser.intercept(CHAT)
    try:
        browser.click("#chat-send")
        held = browser.wait_paused()
        assert not chat_idle(browser)
        status = browser.eval("document.querySelector('#tab-chat .status').textContent")
        assert status.startswith("Waiting for the answer"), status
        assert browser.eval("document.querySelector('#chat-send').disabled") is True
        assert browser.eval("document.querySelector('#chat-reset').disabled") is True

        open_tab(browser, served.base_url, "generate")
        assert browser.eval("document.querySelector('#tabs [data-tab=chat]').dataset.busy")
        browser.fill("#generate-prompt", "a boat")
        set_options(browser, "generate-form", seed=1, n=1)
        browser.click("#generate-form button[type=submit]")
        browser.wait_for("!document.querySelector('#tab-generate .status').hidden")
        wait_final(browser, "generate-results")
        browser.wait_for("document.querySelector('#tab-generate .status').hidden")
        assert error_text(browser, "generate") == ""
        assert not chat_idle(browser)  # still held
        screenshot(browser, shots, "busy-chat-while-generating")
        browser.resume(held)
    finally:
        browser.stop_intercepting()
    browser.wait_for("document.querySelector('#tab-chat .status').hidden", timeout_s=90)
    assert answers(browser) == 1
    assert browser.eval("document.querySelector('#chat-send').disabled") is False
    assert not browser.eval("document.querySelector('#tabs [data-tab=chat]').dataset.busy")


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
        window.__previews = [];
        const results = document.querySelector('#generate-results');
        new MutationObserver(() => {
          const fig = results.querySelector('figure');
          const caption = fig?.querySelector('figcaption').textContent;
          if (!caption || caption === window.__captions.at(-1)) return;
          window.__captions.push(caption);
          const img = fig.querySelector('img');
          if (caption.startsWith('preview')) window.__previews.push({
            shown: img.classList.contains('preview'),
            width: img.getBoundingClientRect().width,
            rendering: getComputedStyle(img).imageRendering,
          });
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
    # a 32x32 preview is drawn as wide as its slot, with hard pixels (not a 32 px speck)
    for preview in browser.eval("window.__previews"):
        assert preview["shown"], preview
        assert preview["rendering"] == "pixelated", preview
        assert preview["width"] >= 200, preview
    thumbs = browser.eval(
        "[...document.querySelectorAll('#generate-results figure')]"
        ".map((f) => f.querySelectorAll('.previews img').length)"
    )
    assert thumbs == [2, 2]  # 12 steps, partial_images 2: both previews kept under the result
    assert error_text(browser, "generate") == ""
    screenshot(browser, shots, "generate-final")


def test_edit(served: Served, browser: Browser, photo: Path, shots: Path) -> None:
    open_tab(browser, served.base_url, "edit")
    browser.set_files("#edit-image", photo)
    browser.fill("#edit-prompt", "make the circle green")
    set_options(browser, "edit-form", size=f"{SIDE}x{SIDE}", steps=6, n=2)  # issue 21, item 1
    browser.click("#edit-form button[type=submit]")
    wait_final(browser, "edit-results", count=2)
    assert error_text(browser, "edit") == ""
    screenshot(browser, shots, "edit")


def test_variations(served: Served, browser: Browser, photo: Path, shots: Path) -> None:
    open_tab(browser, served.base_url, "variation")
    browser.set_files("#variation-image", photo)
    set_options(browser, "variation-form", size=f"{SIDE}x{SIDE}", steps=4, n=2)
    browser.click("#variation-form button[type=submit]")
    wait_final(browser, "variation-results", count=2)
    assert error_text(browser, "variation") == ""
    screenshot(browser, shots, "variations")


def test_api_key_required(keyed_gateway: KeyedGateway, browser: Browser, shots: Path) -> None:
    """Without a key the page shows the API's 401 as it is; typing the key reloads the model
    list; a refused chat turn leaves the conversation as it was, its text back in the box."""
    url = keyed_gateway.base_url
    refused = httpx.get(f"{url}/v1/models", timeout=10)
    assert refused.status_code == 401
    message = refused.json()["error"]["message"]
    browser.goto(url + "/")
    assert wait_error(browser).startswith("Model list (GET /v1/models): 401 ")
    assert message in error_text(browser)
    assert browser.eval("document.querySelector('#demo-banner').hidden")  # not told it is a demo
    screenshot(browser, shots, "api-key-401")

    browser.type("#api-key", keyed_gateway.key)  # keystrokes only: no 'change' until blur
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
    assert wait_error(browser, "generate").startswith("401 ")
    assert refused.json()["error"]["message"] in error_text(browser, "generate")
    screenshot(browser, shots, "api-key-wrong")

    open_tab(browser, url, "chat")
    new_chat(browser, "8")
    browser.fill("#chat-text", "Hello?")
    browser.click("#chat-send")
    assert wait_error(browser, "chat").startswith("401 ")
    assert browser.eval("document.querySelectorAll('#chat-log .msg').length") == 0
    assert browser.eval("document.querySelector('#chat-text').value") == "Hello?"
    screenshot(browser, shots, "chat-401")
    browser.fill("#api-key", keyed_gateway.key)
    browser.click("#chat-send")  # sent again as it was
    wait_answers(browser, 1)
    assert error_text(browser, "chat") == ""
    roles = browser.eval("[...document.querySelectorAll('#chat-log .msg')].map((m) => m.className)")
    assert roles == ["msg user", "msg assistant"]
