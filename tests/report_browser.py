"""Open a local HTML page in headless Chromium and report what a reader would see.

Talks the DevTools protocol over ``--remote-debugging-pipe`` (fd 3: commands in, fd 4:
replies out, NUL-separated JSON), so it needs only the stdlib and Debian's
``chromium``: no websocket client, no driver download. Unlike ``--dump-dom`` it waits
in real time for every <audio> to load its metadata (or fail), and it collects the
console: ``console.error`` calls, uncaught exceptions, and the browser's own log
errors (a resource that fails to load is logged there).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

# Resolves once every <img> has finished and every <audio> has metadata or an error (or
# after 10 s); the verdict is read back by value.
_CHECK = """
new Promise(done => {
  const imgs = [...document.images], auds = [...document.querySelectorAll('audio')];
  const ready = () => imgs.every(i => i.complete) && auds.every(a => a.readyState >= 1 || a.error);
  const t0 = Date.now();
  (function poll() {
    if (ready() || Date.now() - t0 > 10000) {
      done({
        images: imgs.map(i => ({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth})),
        audios: auds.map(a => ({src: a.getAttribute('src'), readyState: a.readyState,
                                error: a.error ? a.error.code : null, duration: a.duration})),
        text: document.body.innerText,
      });
    } else setTimeout(poll, 50);
  })();
})
"""


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class _Pipe:
    """A Chromium process and its DevTools pipe; replies matched by id, events kept in order."""

    def __init__(self, binary: str, args: list[str]):
        self.profile = tempfile.mkdtemp(prefix="scav-chromium-")
        self._log = open(Path(self.profile) / "stderr.log", "w+b")
        to_chrome, from_chrome = os.pipe(), os.pipe()
        # fds >= 10 in the parent, so dup2 onto 3 and 4 in the child cannot overwrite one another
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome[0], from_chrome[1])]
        for fd in (to_chrome[0], from_chrome[1]):
            os.close(fd)

        def child_fds():
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--no-first-run", "--no-default-browser-check", "--mute-audio", "--hide-scrollbars",
             f"--user-data-dir={self.profile}", *args, "about:blank"],
            preexec_fn=child_fds, close_fds=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self._log,  # a file, not a pipe: an undrained pipe would stall a chatty browser
        )
        for fd in high:
            os.close(fd)
        self.out = os.fdopen(to_chrome[1], "wb", buffering=0)
        self.inbox: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self.next_id = 0
        threading.Thread(target=self._read, args=(from_chrome[0],), daemon=True).start()

    def _read(self, fd: int) -> None:
        buf = b""
        with os.fdopen(fd, "rb", buffering=0) as f:
            while chunk := f.read(65536):
                buf += chunk
                *msgs, buf = buf.split(b"\0")
                for m in msgs:
                    self.inbox.put(json.loads(m))
        self.inbox.put(None)  # the browser has gone

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.out.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._next(deadline, method)
            if m is None:
                self._log.seek(0)
                raise RuntimeError(f"chromium exited during {method}: {self._log.read().decode()[-2000:]}")
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]
            self.events.append(m)

    def wait_event(self, method: str, session: str, timeout: float = 30.0) -> dict:
        """The first ``method`` event of ``session`` (already received or the next to come)."""
        match = lambda e: e.get("method") == method and e.get("sessionId") == session  # noqa: E731
        deadline = time.monotonic() + timeout
        seen = next((e for e in self.events if match(e)), None)
        while seen is None:
            m = self._next(deadline, method)
            if m is None:
                raise RuntimeError("chromium exited")
            self.events.append(m)
            seen = m if match(m) else None
        return seen

    def _next(self, deadline: float, waiting_for: str):
        try:
            return self.inbox.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"chromium: no {waiting_for} in time") from None

    def drain(self) -> None:
        """Keep the events that have arrived without waiting for more."""
        while True:
            try:
                m = self.inbox.get_nowait()
            except queue.Empty:
                return
            if m is not None:
                self.events.append(m)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.out.close()
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def console_errors(events: list[dict]) -> list[str]:
    """Error-level console messages, uncaught exceptions and browser log errors, as text."""
    out = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append("Uncaught: " + str(d.get("exception", {}).get("description") or d.get("text")))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            entry = p["entry"]
            out.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
    return out


class Browser:
    """One headless Chromium for several pages: ``with Browser() as b: b.inspect(page)``."""

    def __init__(self, size: tuple[int, int] = (1280, 1800), binary: str | None = None):
        binary = binary or find_chromium()
        if binary is None:
            raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
        self.size = size
        self.pipe = _Pipe(binary, [f"--window-size={size[0]},{size[1]}"])

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.pipe.close()

    def inspect(self, page: str | Path, screenshot: str | Path | None = None) -> dict:
        """Load ``page`` (a local file) in a new tab; return {"images", "audios", "text", "errors"}.

        images: [{src, complete, width}] (width = naturalWidth, 0 when it did not load);
        audios: [{src, readyState, error, duration}]; errors: see :func:`console_errors`, this
        tab's only. screenshot: also write the first ``size`` pixels of the page there as PNG.
        """
        pipe, (w, h) = self.pipe, self.size
        target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            for domain in ("Runtime", "Log", "Page"):
                pipe.call(f"{domain}.enable", session=session)
            pipe.call("Emulation.setDeviceMetricsOverride",
                      {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": False}, session=session)
            pipe.call("Page.navigate", {"url": Path(page).resolve().as_uri()}, session=session)
            pipe.wait_event("Page.loadEventFired", session)
            res = pipe.call("Runtime.evaluate", {"expression": _CHECK, "awaitPromise": True, "returnByValue": True},
                            session=session, timeout=30)
            if "exceptionDetails" in res:
                raise RuntimeError(f"check script failed: {res['exceptionDetails']}")
            verdict = res["result"]["value"]
            if screenshot is not None:
                png = pipe.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
                Path(screenshot).write_bytes(base64.b64decode(png))
            time.sleep(0.2)  # late log entries (a failed load logs after the element's error event)
            pipe.drain()
            verdict["errors"] = console_errors([e for e in pipe.events if e.get("sessionId") == session])
            return verdict
        finally:
            pipe.call("Target.closeTarget", {"targetId": target})


def inspect_page(page: str | Path, screenshot: str | Path | None = None, size: tuple[int, int] = (1280, 1800),
                 binary: str | None = None) -> dict:
    """:meth:`Browser.inspect` in a browser of its own."""
    with Browser(size, binary) as b:
        return b.inspect(page, screenshot)
