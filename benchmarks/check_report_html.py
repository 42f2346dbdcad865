"""Open a report.html in a real headless Chromium and check that it renders.

Run it:  python benchmarks/check_report_html.py report/report.html --screenshot report-shot.png
(needs Debian's chromium: `apt-get install -y chromium`; standard library only.)

Drives the browser through the Chrome DevTools protocol over `--remote-debugging-pipe` (NUL-separated JSON
on file descriptors 3 and 4, no websocket and no network port), and reports:
- loaded: the page's load event fired;
- console errors: console.error/assert calls, uncaught exceptions and browser log entries of level error
  (a broken image or a blocked request shows up there);
- images rendered: how many <img> elements finished loading with naturalWidth > 0, of how many;
- external requests: requests for anything but file: and data: URLs (a self-contained page makes none);
- a full-page PNG screenshot, to look at.
Exit status 0 when loaded, no console error, every image rendered and no external request; 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
WIDTH = 1280


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class DevTools:
    """A minimal CDP client over --remote-debugging-pipe."""

    def __init__(self, binary: str, profile: str) -> None:
        cmd_r, self._cmd_w = os.pipe()  # we write commands, the browser reads them on fd 3
        self._evt_r, evt_w = os.pipe()  # the browser writes on fd 4, we read

        def child_fds() -> None:  # runs in the child before exec: put the pipe ends on fds 3 and 4
            a, b = os.dup(cmd_r), os.dup(evt_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--remote-debugging-pipe",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=child_fds,
            close_fds=False,  # fds 3 and 4 must survive (Python's own fds are close-on-exec anyway)
        )
        os.close(cmd_r)
        os.close(evt_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._evt_r], [], [], left)[0]:
                raise TimeoutError("no answer from the browser")
            chunk = os.read(self._evt_r, 1 << 16)
            if not chunk:
                raise RuntimeError("the browser closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(
        self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30
    ) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        if os.environ.get("CHECK_HTML_DEBUG"):
            print(f"-> {method}", file=sys.stderr)
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        while time.monotonic() < deadline:
            try:
                ev = self._read_message(deadline)
            except TimeoutError:
                return None
            self.events.append(ev)
            if ev.get("method") == method:
                return ev
        return None

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._cmd_w, self._evt_r):
            try:
                os.close(fd)
            except OSError:
                pass


IMAGES_JS = """JSON.stringify(Array.from(document.images).map(i => ({
  alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight, shown: i.getBoundingClientRect().width
})))"""


# the page's own width against the viewport's: a wider page scrolls sideways (a table that overflows)
WIDTHS_JS = """JSON.stringify({scroll: Math.max(document.documentElement.scrollWidth, document.body.scrollWidth),
  client: document.documentElement.clientWidth,
  tables: Array.from(document.querySelectorAll("table")).filter(
    t => t.scrollWidth > t.parentElement.clientWidth + 1).length})"""


def check_html(
    html_path: Path, screenshot: Path | None = None, binary: str | None = None, timeout: float = 30
) -> dict:
    """Load `html_path` in headless Chromium; returns the findings (see the module docstring)."""
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium found (apt-get install -y chromium)")
    url = Path(html_path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="leader-chromium-") as profile:
        dt = DevTools(binary, profile)
        try:
            target = dt.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = dt.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                dt.send(f"{domain}.enable", session=session)
            dt.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": WIDTH, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            dt.events.clear()
            dt.send("Page.navigate", {"url": url}, session=session)
            loaded = dt.wait_event("Page.loadEventFired", timeout) is not None
            images = json.loads(
                dt.send(
                    "Runtime.evaluate", {"expression": IMAGES_JS, "returnByValue": True}, session=session
                )["result"]["value"]
            )
            height = dt.send(
                "Runtime.evaluate",
                {"expression": "document.documentElement.scrollHeight", "returnByValue": True},
                session=session,
            )["result"]["value"]
            widths = dt.send(
                "Runtime.evaluate",
                {"expression": WIDTHS_JS, "returnByValue": True},
                session=session,
            )["result"]["value"]
            if screenshot is not None:
                dt.send(
                    "Emulation.setDeviceMetricsOverride",
                    {"width": WIDTH, "height": int(height), "deviceScaleFactor": 1, "mobile": False},
                    session=session,
                )
                shot = dt.send("Page.captureScreenshot", {"format": "png"}, session=session, timeout=60)
                Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
            dt.wait_event("Never.happens", 0.3)  # collect late console/log events
        finally:
            dt.close()
    errors = []
    for ev in dt.events:
        m, p = ev.get("method"), ev.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(
                "console." + p["type"] + ": " + " ".join(str(a.get("value", "")) for a in p.get("args", []))
            )
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            desc = (d.get("exception") or {}).get("description", "").split("\n")[0]
            errors.append(f"exception: {d.get('text', '')} {desc}".strip())
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            errors.append("log: " + p["entry"].get("text", ""))
    external = [
        ev["params"]["request"]["url"]
        for ev in dt.events
        if ev.get("method") == "Network.requestWillBeSent"
        and not ev["params"]["request"]["url"].startswith(("file:", "data:"))
    ]
    rendered = [i for i in images if i["complete"] and i["w"] > 0 and i["h"] > 0 and i["shown"] > 0]
    return {
        "url": url,
        "loaded": loaded,
        "console_errors": errors,
        "images": len(images),
        "images_rendered": len(rendered),
        "external_requests": external,
        "page_height": int(height),
        "viewport_width": WIDTH,
        "scroll_width": int(json.loads(widths)["scroll"]),
        "client_width": int(json.loads(widths)["client"]),
        "tables_scrolling": int(json.loads(widths)["tables"]),
        "screenshot": str(screenshot) if screenshot is not None else None,
    }


def ok(result: dict) -> bool:
    return (
        result["loaded"]
        and not result["console_errors"]
        and result["images"] > 0
        and result["images_rendered"] == result["images"]
        and not result["external_requests"]
        and result["scroll_width"] <= result["client_width"]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", type=Path, help="report.html to open")
    ap.add_argument(
        "--screenshot", type=Path, default=Path("report-screenshot.png"), help="where to save the PNG"
    )
    ap.add_argument("--json", action="store_true", help="print the findings as JSON")
    args = ap.parse_args(argv)
    if not args.html.is_file():
        print(f"error: {args.html} does not exist", file=sys.stderr)
        return 2
    result = check_html(args.html, args.screenshot)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"loaded: {'yes' if result['loaded'] else 'NO'}")
        print(f"console errors: {len(result['console_errors'])}")
        for e in result["console_errors"]:
            print(f"  {e}")
        print(f"images rendered: {result['images_rendered']} of {result['images']}")
        print(f"external requests: {len(result['external_requests'])}")
        print(f"page width: {result['scroll_width']} px in a {result['client_width']} px viewport")
        print(f"tables wider than the page (they scroll inside): {result['tables_scrolling']}")
        print(f"screenshot: {result['screenshot']} (page height {result['page_height']} px)")
    return 0 if ok(result) else 1


if __name__ == "__main__":
    sys.exit(main())
