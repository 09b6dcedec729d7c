"""Headless Chromium driven over the DevTools protocol (CDP), with nothing but ``websockets``.

Just what the playground test needs: open a page, run JavaScript in it, wait for a condition,
attach files to an ``<input type=file>``, type as a keyboard does, take screenshots, collect
uncaught page errors and failed HTTP responses (a favicon 404 included), and hold requests the
page makes (CDP's Fetch domain) to look at their bodies or answer them.
Debian's ``chromium`` (``apt-get install chromium``, as ``.ci/run`` does) or ``$SEEDX_CHROMIUM``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--remote-debugging-port=0", "--window-size=1280,1000",
)  # fmt: skip


def find_chromium() -> str | None:
    for candidate in (os.environ.get("SEEDX_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


class BrowserError(AssertionError):
    pass


class Browser:
    """One Chromium with one page; close() kills it and removes its profile."""

    def __init__(self, executable: str, timeout_s: float = 30) -> None:
        self._profile = tempfile.mkdtemp(prefix="seedx-chromium-")
        self._process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._next_id = 0
        self.errors: list[str] = []  # uncaught exceptions and console.error lines of the page
        self.failed: list[tuple[int, str]] = []  # (status, url) of HTTP answers >= 400
        self.paused: list[dict[str, Any]] = []  # requests held by intercept(), oldest first
        self._exit = contextlib.ExitStack()
        try:
            self._connect(timeout_s)
        except BaseException:
            self.close()
            raise

    def _connect(self, timeout_s: float) -> None:
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise BrowserError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
        self._ws: ClientConnection = self._exit.enter_context(
            connect(url, max_size=None, open_timeout=timeout_s)
        )
        for domain in ("Page", "Runtime", "DOM", "Network"):
            self.send(f"{domain}.enable")

    # --- protocol ------------------------------------------------------------------------------
    def send(self, method: str, timeout_s: float = 60, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        ident = self._next_id
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            message = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == ident:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self._on_event(message)

    def _on_event(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"uncaught: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append("console.error: " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in params.get("args", [])
            ))  # fmt: skip
        elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
            self.failed.append((params["response"]["status"], params["response"]["url"]))
        elif method == "Fetch.requestPaused":
            self.paused.append(params)

    # --- page ----------------------------------------------------------------------------------
    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", timeout_s=30)

    def eval(self, expression: str, timeout_s: float = 60) -> Any:
        """The value of a JavaScript expression (awaited when it is a promise)."""
        result = self.send(
            "Runtime.evaluate",
            timeout_s=timeout_s,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(details.get("exception", {}).get("description") or str(details))
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout_s: float = 60, every_s: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.eval(condition)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout_s:.0f} s waiting for {condition}")
            time.sleep(every_s)

    def set_files(self, selector: str, *paths: Path) -> None:
        """Attaches files to an ``<input type=file>`` as if the user picked them."""
        root = self.send("DOM.getDocument", depth=0)["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        if not node:
            raise BrowserError(f"no element {selector}")
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(p) for p in paths])
        self.eval(
            f"document.querySelector({json.dumps(selector)})"
            ".dispatchEvent(new Event('change', {bubbles: true}))"
        )

    def fill(self, selector: str, value: str) -> None:
        """Sets an input's value and fires ``input`` and ``change``, as typing then leaving does."""
        self.eval(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            f" el.value = {json.dumps(value)};"
            " el.dispatchEvent(new Event('input', {bubbles: true}));"
            " el.dispatchEvent(new Event('change', {bubbles: true})); })()"
        )

    def click(self, selector: str) -> None:
        self.eval(f"document.querySelector({json.dumps(selector)}).click()")

    def type(self, selector: str, text: str) -> None:
        """Focuses an input and types ``text`` into it: ``input`` events, no ``change``."""
        self.eval(f"document.querySelector({json.dumps(selector)}).focus()")
        for char in text:
            self.send("Input.insertText", text=char)

    # --- holding requests ----------------------------------------------------------------------
    def intercept(self, url_pattern: str) -> None:
        """Holds every request whose URL matches ``url_pattern`` (``*`` wildcards) until
        :meth:`resume` or :meth:`fulfill`; held requests collect in :attr:`paused`."""
        self.paused.clear()
        self.send("Fetch.enable", patterns=[{"urlPattern": url_pattern, "requestStage": "Request"}])

    def stop_intercepting(self) -> None:
        self.send("Fetch.disable")

    def wait_paused(self, count: int = 1, timeout_s: float = 30) -> dict[str, Any]:
        """The ``count``-th held request (its ``request`` has ``url`` and ``postData``)."""
        deadline = time.monotonic() + timeout_s
        while len(self.paused) < count:
            if time.monotonic() > deadline:
                raise BrowserError(f"no request held after {timeout_s:.0f} s")
            self.eval("0")  # reads the events that arrived meanwhile
            time.sleep(0.05)
        return self.paused[count - 1]

    def resume(self, held: dict[str, Any]) -> None:
        """Lets a held request go on to the server as it was."""
        self.send("Fetch.continueRequest", requestId=held["requestId"])

    def fulfill(
        self, held: dict[str, Any], body: bytes, status: int = 200, content_type: str = ""
    ) -> None:
        """Answers a held request with ``body`` instead of the server."""
        headers = [{"name": "Content-Type", "value": content_type}] if content_type else []
        self.send(
            "Fetch.fulfillRequest",
            requestId=held["requestId"],
            responseCode=status,
            responseHeaders=headers,
            body=base64.b64encode(body).decode(),
        )

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def close(self) -> None:
        self._exit.close()
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)
