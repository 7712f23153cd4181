"""The dashboard at `/`, in a real headless Chromium driven over the Chrome DevTools Protocol.

The page must load without console errors, show every account and draw the chart from the
requests made here; with DARIO_API_KEY set it must ask for the key (its API call answers 401,
the one error the browser is allowed to log) and work once the key is entered.

Needs /usr/bin/chromium (Debian's `chromium`; tests/run installs it) and the `websocket-client`
package. A screenshot is kept at tests/artifacts/dashboard.png.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support import ROOT, Dariod, stop_process

pytestmark = pytest.mark.timeout(90)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
SONNET = "claude-sonnet-4-6"
HAIKU = "claude-haiku-4-5-20251001"
KEYS = {"work": "sk-ant-dashboard-work", "side": "sk-ant-dashboard-side"}
MASTER = "dario-dashboard-master-key"
VIEWPORT = (1280, 1500)

if not CHROMIUM.exists():
    pytest.skip(
        "the dashboard tests need Chromium at /usr/bin/chromium (apt-get install chromium; tests/run does it)",
        allow_module_level=True,
    )
websocket = pytest.importorskip("websocket", reason="the dashboard tests need websocket-client (pip)")


# -- a minimal CDP client ----------------------------------------------------------------


class CDPError(Exception):
    pass


class Browser:
    """One headless Chromium and a websocket to its browser target (flat sessions per page)."""

    def __init__(self) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="dario-chromium-"))
        self.log = self.profile / "chromium.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
                 f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 20
        while True:
            lines = active.read_text().split("\n") if active.exists() else []
            if len(lines) >= 2 and lines[0].strip() and lines[1].strip():
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"chromium did not start:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)
        url = f"ws://127.0.0.1:{lines[0].strip()}{lines[1].strip()}"
        # No Origin header: Chromium refuses DevTools websockets from origins it was not told about.
        self.ws = websocket.create_connection(url, suppress_origin=True, timeout=10)
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def _recv(self, deadline: float) -> dict[str, Any] | None:
        self.ws.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            raw = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return None
        msg: dict[str, Any] = json.loads(raw)
        if "method" in msg:
            self.events.append(msg)
        return msg

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 15.0) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self._recv(deadline)
            if got is not None and got.get("id") == self._id:
                if "error" in got:
                    raise CDPError(f"{method}: {got['error']}")
                result: dict[str, Any] = got.get("result", {})
                return result
        raise CDPError(f"{method}: no answer within {timeout} s")

    def pump(self, seconds: float) -> None:
        """Collect events for a while."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._recv(deadline)

    def open_page(self) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session, target)
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.send(f"{domain}.enable")
        w, h = VIEWPORT
        page.send("Emulation.setDeviceMetricsOverride", {"width": w, "height": h, "deviceScaleFactor": 1,
                                                         "mobile": False})
        return page

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close", timeout=5)
        with contextlib.suppress(Exception):
            self.ws.close()
        stop_process(self.proc)
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    def __init__(self, browser: Browser, session: str, target: str) -> None:
        self.browser = browser
        self.session = session
        self.target = target

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.send(method, params, self.session)

    def events(self, *methods: str) -> list[dict[str, Any]]:
        return [e["params"] for e in self.browser.events
                if e.get("sessionId") == self.session and e["method"] in methods]

    def navigate(self, url: str, timeout: float = 15.0) -> None:
        start = len(self.events("Page.loadEventFired"))
        result = self.send("Page.navigate", {"url": url})
        assert not result.get("errorText"), result
        deadline = time.monotonic() + timeout
        while len(self.events("Page.loadEventFired")) == start:
            assert time.monotonic() < deadline, f"{url} did not load"
            self.browser.pump(0.05)

    def eval(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise CDPError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for: {expression}"
            self.browser.pump(0.1)

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def problems(self) -> list[dict[str, Any]]:
        """Everything the page logged as an error: console.error/assert, uncaught exceptions, and
        browser-level errors (failed loads, CSP violations, …) as {kind, text, url}."""
        out: list[dict[str, Any]] = []
        for p in self.events("Runtime.consoleAPICalled"):
            if p["type"] in ("error", "assert"):
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
                out.append({"kind": f"console.{p['type']}", "text": text, "url": ""})
        for p in self.events("Runtime.exceptionThrown"):
            d = p["exceptionDetails"]
            out.append({"kind": "exception", "text": d.get("exception", {}).get("description") or d.get("text"),
                        "url": d.get("url", "")})
        for p in self.events("Log.entryAdded"):
            e = p["entry"]
            if e["level"] == "error":
                out.append({"kind": f"log.{e.get('source')}", "text": e.get("text", ""), "url": e.get("url", "")})
        return out

    def responses(self, path: str) -> list[int]:
        return [int(p["response"]["status"]) for p in self.events("Network.responseReceived")
                if urllib.parse.urlsplit(p["response"]["url"]).path == path]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.browser.send("Target.closeTarget", {"targetId": self.target})


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    b = Browser()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    p = browser.open_page()
    try:
        yield p
    finally:
        p.close()


# -- traffic -----------------------------------------------------------------------------


def post(d: Dariod, body: dict[str, Any], key: str | None = None) -> int:
    import http.client

    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    if key:
        headers["x-api-key"] = key
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    try:
        conn.request("POST", "/v1/messages", body=orjson.dumps(body), headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def ask(model: str, text: str, max_tokens: int = 256) -> dict[str, Any]:
    return {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]}


# -- checks ------------------------------------------------------------------------------

CHART_PIXELS = """(() => {
  const c = document.getElementById('chart');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let painted = 0, series = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 0) painted++;
    // the first series' colour, #3b82f6, drawn opaque (the line, not the translucent fill)
    const near = (v, want) => Math.abs(v - want) < 40;
    if (d[i + 3] > 200 && near(d[i], 59) && near(d[i + 1], 130) && near(d[i + 2], 246)) series++;
  }
  return {width: c.width, height: c.height, painted, series};
})()"""


def test_dashboard_shows_accounts_totals_and_chart(
    dariod: Dariod, upstream: Any, page: Page
) -> None:
    # "side" has a small output budget left, so it shows low headroom and a run-out forecast.
    upstream.set_limits(KEYS["side"], output_tokens=1000, remaining={"output_tokens": 400}, reset_in=3600)
    for alias, key in KEYS.items():
        dariod.login(alias, key, upstream.url)
    assert dariod.ctl("accounts", "prefer", "side").returncode == 0
    assert post(dariod, ask(SONNET, "[[long:150]]", max_tokens=160)) == 200
    assert post(dariod, ask(SONNET, "[[long:150]] [[cache]]", max_tokens=160)) == 200
    assert dariod.ctl("accounts", "prefer", "--none").returncode == 0
    statuses = [post(dariod, ask(m, f"{t} [[long:{n}]]"))
                for m, t, n in ((SONNET, "a", 60), (HAIKU, "b", 30), (HAIKU, "c", 90), (SONNET, "d", 20))]
    assert statuses == [200] * 4
    upstream.script({"status": 400})
    assert post(dariod, ask(SONNET, "refused")) == 400
    total = 7

    page.navigate(dariod.url + "/")
    page.wait_for("document.getElementById('status').textContent.startsWith('updated')")
    # Every account, by alias, with its status badge and headroom meter.
    cards = page.eval("""[...document.querySelectorAll('#accounts .account')].map(a => ({
        alias: a.dataset.alias, badge: a.querySelector('.badge').textContent,
        meter: a.querySelector('[role=meter]').getAttribute('aria-valuenow')}))""")
    assert sorted(c["alias"] for c in cards) == sorted(KEYS)
    assert all(c["badge"] == "ok" for c in cards), cards
    meters = {c["alias"]: int(c["meter"]) for c in cards}
    assert meters["side"] <= 10 < meters["work"], meters  # 100 of 1000 output tokens left on "side"

    totals = page.eval("""Object.fromEntries([...document.querySelectorAll('#totals .stat')].map(
        s => [s.querySelector('.k').textContent, s.querySelector('.v').textContent]))""")
    assert totals["requests"] == str(total) and totals["errors"] == "1", totals
    assert totals["cache write"] == "50" and totals["cache read"] == "100", totals
    assert totals["output"] == str(150 + 150 + 60 + 30 + 90 + 20)
    forecast = page.eval("[...document.querySelectorAll('#forecast li')].map(li => li.textContent)")
    assert any(line.startswith("side: output tokens run out in ") for line in forecast), forecast
    models = page.eval("[...document.querySelectorAll('#bymodel tbody tr td:first-child')].map(td => td.textContent)")
    assert sorted(models) == sorted([SONNET, HAIKU])
    assert page.eval("document.querySelectorAll('#recent tbody tr').length") == total
    assert page.eval("document.querySelectorAll('#recent td.err').length") >= 1

    # The chart: a sized canvas with the series drawn in it, and a legend naming both accounts.
    pixels = page.eval(CHART_PIXELS)
    assert pixels["width"] >= 300 and pixels["height"] >= 100, pixels
    assert pixels["painted"] > 1000 and pixels["series"] > 50, pixels
    legend = page.eval("[...document.querySelectorAll('#legend span')].map(s => s.textContent)")
    assert sorted(item.split()[0] for item in legend) == sorted(KEYS), legend

    # Grouping by model redraws the same tokens under the model names.
    page.eval("document.querySelector('#groupby button[data-group=model]').click()")
    legend = page.eval("[...document.querySelectorAll('#legend span')].map(s => s.textContent)")
    assert sorted(item.split()[0] for item in legend) == sorted([SONNET, HAIKU]), legend
    page.eval("document.querySelector('#groupby button[data-group=account]').click()")

    page.screenshot(ARTIFACTS / "dashboard.png")
    page.browser.pump(0.3)
    assert page.problems() == []
    assert page.responses("/analytics") and set(page.responses("/analytics")) == {200}


def test_dashboard_with_api_key_asks_for_it(dariod_factory: Callable[..., Dariod], upstream: Any,
                                           page: Page) -> None:
    d = dariod_factory(env={"DARIO_API_KEY": MASTER})
    d.login("work", KEYS["work"], upstream.url)
    assert post(d, ask(HAIKU, "hi"), key=MASTER) == 200

    page.navigate(d.url + "/")
    page.wait_for("!document.getElementById('auth').hidden")
    assert page.eval("document.getElementById('status').textContent") == "API key needed"
    assert page.eval("document.getElementById('keyinput').type") == "password"
    assert page.eval("document.querySelectorAll('#accounts .account').length") == 0
    # It does not claim there are no accounts: it cannot see them yet.
    assert page.eval("document.getElementById('accounts').textContent") == (
        "Enter the API key above to see the accounts."
    )
    assert set(page.responses("/analytics")) == {401}
    page.screenshot(ARTIFACTS / "dashboard-auth.png")

    # The one error the browser may log: its own report of the refused /analytics call. Chromium
    # logs any 4xx answer to fetch() as "Failed to load resource"; the page handles it (the key
    # field), so it is expected. Anything else (a script error, CSP, another URL) fails the test.
    def unexpected() -> list[dict[str, Any]]:
        return [p for p in page.problems()
                if not (p["kind"] == "log.network" and "401" in p["text"]
                        and urllib.parse.urlsplit(p["url"]).path == "/analytics")]

    page.browser.pump(0.3)
    assert unexpected() == []

    # A wrong key is refused and says so; the right one brings the data.
    submit = """(k => { const i = document.getElementById('keyinput'); i.value = k;
        document.getElementById('keyform').requestSubmit(); })(%s)"""
    page.eval(submit % json.dumps("dario-not-the-key"))
    page.wait_for("document.getElementById('status').textContent === 'that API key was refused'")
    page.eval(submit % json.dumps(MASTER))
    page.wait_for("document.getElementById('status').textContent.startsWith('updated')")
    assert page.eval("document.getElementById('auth').hidden") is True
    assert page.eval("[...document.querySelectorAll('#accounts .account')].map(a => a.dataset.alias)") == ["work"]
    assert page.eval("document.getElementById('keyinput').value") == ""  # not left in the field
    assert page.responses("/analytics")[-1] == 200
    page.browser.pump(0.3)
    assert unexpected() == []


def post_chat(d: Dariod, model: str) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions", headers={"content-type": "application/json"},
                     body=orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


NARROW = 500


def test_dashboard_at_500px_unserved_requests_and_unknown_costs(dariod: Dariod, upstream: Any, page: Page) -> None:
    dariod.login("work", KEYS["work"], upstream.url)
    # claude-opus-5-5 (the default "opus") has no price, so the cost of the window is unknown.
    # The fake reports 100 cache-read tokens for [[cache]]: on Sonnet ($3 input, $0.30 cache read per
    # million) they saved $0.00027.
    assert post(dariod, ask(SONNET, "a [[long:40]] [[cache]]")) == 200
    assert post(dariod, ask("opus", "b [[long:40]]")) == 200
    assert post_chat(dariod, "gpt-no-such-model") == 404  # refused here: served by no account

    page.send("Emulation.setDeviceMetricsOverride", {"width": NARROW, "height": 1500, "deviceScaleFactor": 1,
                                                     "mobile": False})
    try:
        page.navigate(dariod.url + "/")
        page.wait_for("document.getElementById('status').textContent.startsWith('updated')")
        # No sideways scrolling: the page is no wider than the window.
        sizes = page.eval(
            "({scroll: document.documentElement.scrollWidth, client: document.documentElement.clientWidth})")
        assert sizes["scroll"] <= sizes["client"] <= NARROW, sizes
        # Cost and status are on screen, not past the right edge, and no table needs scrolling sideways.
        for selector in ("#status", "#totals .stat:last-child", "#bymodel tbody tr td:nth-child(8)",
                         "#byclient tbody tr td:last-child", "#accounts .account .cache",
                         "#recent tbody tr td:last-child", "#recent tbody tr td:nth-child(5)"):
            right = page.eval(f"document.querySelector('{selector}').getBoundingClientRect().right")
            assert 0 < right <= NARROW, (selector, right)
        wide = page.eval("[...document.querySelectorAll('.scroll')].filter(s => s.scrollWidth > s.clientWidth).length")
        assert wide == 0

        totals = page.eval("""Object.fromEntries([...document.querySelectorAll('#totals .stat')].map(
            s => [s.querySelector('.k').textContent, s.querySelector('.v').textContent]))""")
        assert totals["requests"] == "3" and totals["errors"] == "1", totals  # the 404 counts
        assert totals["cost"] == "—", totals  # unknown, not $0.0000
        # The cache: its share of the prompt and what it saved; opus read nothing, so the saving is known.
        assert totals["cached"].endswith("%") and totals["cached"] not in ("0%", "—"), totals
        assert totals["saved"] == "$0.0003", totals
        card = page.eval("document.querySelector('#accounts .account[data-alias=work] .cache').textContent")
        assert card == f"cache {totals['cached']} read · saved $0.0003", card
        clients = page.eval("""[...document.querySelectorAll('#byclient tbody tr')].map(tr => ({
            client: tr.dataset.client, cached: tr.cells[6].textContent, saved: tr.cells[7].textContent}))""")
        assert [(c["cached"], c["saved"]) for c in clients] == [(totals["cached"], "$0.0003")], clients
        costs = page.eval("""Object.fromEntries([...document.querySelectorAll('#bymodel tbody tr')].map(
            tr => [tr.cells[0].textContent, tr.cells[7].textContent]))""")
        assert costs["claude-opus-5-5"] == "—" and costs[SONNET].startswith("$"), costs

        accounts = page.eval("[...document.querySelectorAll('#recent tbody tr')].map(tr => tr.cells[2].textContent)")
        assert accounts.count("work") == 2 and accounts.count("no account") == 1, accounts
        legend = page.eval("[...document.querySelectorAll('#legend span')].map(s => s.textContent)")
        assert [item.split()[0] for item in legend] == ["work"], legend  # nothing stacked for "no account"
        page.eval("document.querySelector('#groupby button[data-group=model]').click()")
        legend = page.eval("[...document.querySelectorAll('#legend span')].map(s => s.textContent)")
        assert sorted(item.split()[0] for item in legend) == sorted([SONNET, "claude-opus-5-5"]), legend
        page.screenshot(ARTIFACTS / "dashboard-500px.png")
        page.browser.pump(0.3)
        assert page.problems() == []
    finally:
        w, h = VIEWPORT
        page.send("Emulation.setDeviceMetricsOverride", {"width": w, "height": h, "deviceScaleFactor": 1,
                                                         "mobile": False})
