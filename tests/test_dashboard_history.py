"""The dashboard that remembers, in a real browser: Debian's Chromium through Playwright
against a real ``headwater serve`` subprocess on 127.0.0.1, which these tests stop, kill
and start again on the same port and folder (its run history is ``.headwater/runs.db``
there).

Every page refuses (and records) requests to any other host and collects console errors;
both must stay empty. Screenshots of each view, desktop and 360 px wide, light and dark,
go to ``HEADWATER_ARTIFACTS`` (default: a pytest tmp dir). Page-side predicates are
functions: the page's Content-Security-Policy forbids evaluating strings.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest

from dashboard_support import SERVE_CONFIG, ServeProcess, artifacts_dir, browser_or_skip, missing

TIMEOUT_MS = 20_000

CONFIG = (
    SERVE_CONFIG
    + """\
  skips:
    description: Divides with one argument, skipping every item to the dead letter sink.
    pipeline:
      name: skips
      sources: {n: {action: range, params: {stop: 120}}}
      steps: [{transformer: map, params: {fn: "operator:truediv"}, on_error: skip}]
      sinks: [{sink: websocket}]
      dead_letter: {sink: "null"}
"""
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright for Python is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        browser = browser_or_skip(playwright)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return artifacts_dir(tmp_path_factory)


@pytest.fixture
def server(browser: Any, tmp_path: Path) -> Iterator[ServeProcess]:
    process = ServeProcess(tmp_path, CONFIG)
    process.start()
    try:
        yield process
    finally:
        process.stop()


class Page:
    """A dashboard page in its own browser context, and what it did."""

    def __init__(self, page: Any, artifacts: Path) -> None:
        self.page = page
        self.artifacts = artifacts
        self.console_errors: list[str] = []
        self.foreign: list[str] = []

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.artifacts / f"{name}.png"), full_page=True)

    def text(self, selector: str) -> str:
        return str(self.page.locator(selector).first.text_content()).strip()


@contextmanager
def opened(
    browser: Any,
    server: ServeProcess,
    artifacts: Path,
    path: str = "/",
    *,
    width: int = 1440,
    dark: bool = False,
    live: bool = True,
    expected_errors: re.Pattern[str] | None = None,
) -> Iterator[Page]:
    """Open ``path`` of ``server``; at the end, no console error (but those matching
    ``expected_errors``: a browser logs refused connections) and no foreign request."""
    context = browser.new_context(
        viewport={"width": width, "height": 900}, color_scheme="dark" if dark else "light"
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    board = Page(page, artifacts)
    own = urlsplit(server.http_url).netloc

    def route(request_route: Any) -> None:
        url = request_route.request.url
        if urlsplit(url).netloc == own:
            request_route.continue_()
        else:
            board.foreign.append(url)
            request_route.abort()

    context.route("**/*", route)
    page.on(
        "console",
        lambda m: board.console_errors.append(m.text) if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: board.console_errors.append(f"uncaught: {e}"))
    try:
        page.goto(server.http_url + path)
        if live:
            page.wait_for_selector("#conn[data-state=open]")
        yield board
        errors = [
            e for e in board.console_errors if not (expected_errors and expected_errors.search(e))
        ]
        assert errors == []
        assert board.foreign == []
    finally:
        context.close()


async def _run(url: str, pipeline: str, params: dict[str, Any]) -> tuple[str, str]:
    from headwater.client import connect

    async with connect(url) as client:
        started = await client.run(pipeline, params)
        async for message in client:
            if message.type == "stream_complete" and message.stream == started.stream:
                return started.run, started.stream
    raise AssertionError("the run's stream did not complete")


def run_to_end(server: ServeProcess, pipeline: str, **params: Any) -> tuple[str, str]:
    """Run ``pipeline`` over the WebSocket protocol until its stream completes."""
    url = f"ws://127.0.0.1:{server.port}/"
    # in a thread of its own: Playwright's sync API keeps an event loop in this one
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, _run, url, pipeline, params).result(timeout=30)


def get_json(server: ServeProcess, path: str) -> Any:
    with urllib.request.urlopen(server.http_url + path, timeout=10) as response:
        return json.load(response)


def metrics_errors(server: ServeProcess) -> int:
    """The sum of ``headwater_stage_errors_total`` of ``/metrics``."""
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.findall(r"^headwater_stage_errors_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    return int(sum(float(v) for v in found))


def test_a_runs_page_after_a_restart_shows_params_stages_fatal_error_and_chunks(
    browser: Any, server: ServeProcess, artifacts: Path
) -> None:
    failed, _ = run_to_end(server, "fails")
    good, _ = run_to_end(server, "slow", stop=12, rate=200)
    assert server.stop() == 130
    server.start()
    with opened(browser, server, artifacts, f"/runs/{failed}") as board:
        page = board.page
        page.wait_for_selector("#rp-fatal:not([hidden])")
        assert board.text("#rp-fatal-type") == "TypeError"
        assert board.text("#rp-fatal-stage") == "steps[0].map"
        assert "Traceback" in board.text("#rp-fatal-traceback")
        assert page.get_attribute("#rp-state", "data-state") == "failed"
        stages = page.eval_on_selector_all(
            "#rp-stages tbody tr", "rs => rs.map(r => r.dataset.key)"
        )
        assert stages == ["sources.n", "steps[0].map", "sinks.websocket"]
        page.wait_for_selector("#stream-view[data-state=complete]")
        assert page.get_attribute("#stream-view", "data-reason") == "failed"
        board.shot("10-run-failed-after-restart")
    with opened(browser, server, artifacts, f"/runs/{good}") as board:
        page = board.page
        page.wait_for_selector("#rp-state[data-state=succeeded]")
        params = page.eval_on_selector_all(
            "#rp-params tbody tr", "rs => rs.map(r => r.innerText.replace(/\\s+/g, ' ').trim())"
        )
        assert params == ["stop 12", "rate 200"]
        assert page.locator("#rp-fatal").is_hidden()
        page.wait_for_selector("#stream-view[data-state=complete]")
        rows = page.eval_on_selector_all("#sv-rows li", "ls => ls.map(l => l.textContent)")
        assert rows[0] == "11"  # newest first: the last value of range(12)
        assert len(rows) == 12
        assert "replayed from the run history" in board.text("#sv-end")
        node = page.locator('#rp-graph .node[data-stage="sources.n"]')
        assert node.get_attribute("data-out") == "12"
        board.shot("11-run-succeeded-after-restart")


def test_run_again_starts_a_new_run_with_the_same_params(
    browser: Any, server: ServeProcess, artifacts: Path
) -> None:
    first, _ = run_to_end(server, "slow", stop=12, rate=200)
    with opened(browser, server, artifacts, f"/runs/{first}") as board:
        page = board.page
        page.wait_for_selector("#rp-state[data-state=succeeded]")
        page.wait_for_selector("#rp-again:enabled")
        with page.expect_navigation(url=re.compile(r"/runs/(?!" + first + r")[0-9a-f]+$")):
            page.click("#rp-again")
        page.wait_for_selector("#conn[data-state=open]")
        page.wait_for_selector("#rp-state[data-state=succeeded]")
        again = page.url.rsplit("/", 1)[1]
        params = page.eval_on_selector_all(
            "#rp-params tbody tr", "rs => rs.map(r => r.innerText.replace(/\\s+/g, ' ').trim())"
        )
        assert params == ["stop 12", "rate 200"]
        board.shot("18-run-again")
    record = get_json(server, f"/api/runs/{again}")
    assert again != first
    assert record["pipeline"] == "slow"
    assert record["params"] == {"stop": 12, "rate": 200}
    assert record["stages"]["sources.n"]["items_out"] == 12
    runs = get_json(server, "/api/runs?pipeline=slow")["runs"]
    assert [r["run_id"] for r in runs] == [again, first]


def test_the_chart_range_changes_the_window_and_resolution(
    browser: Any, server: ServeProcess, artifacts: Path
) -> None:
    with opened(browser, server, artifacts) as board:
        page = board.page
        page.wait_for_function(
            "() => document.querySelector('#throughput-chart').getAttribute('aria-label')"
            ".includes('over the last 1 min:')"
        )
        for value, step, span, shown in (("15m", 10, 900, "15 min"), ("1h", 60, 3600, "1 h")):
            with page.expect_response(
                lambda r, v=value: "/api/dashboard/history" in r.url and f"range={v}" in r.url
            ) as answer:
                page.select_option("#chart-range", value)
            data = answer.value.json()
            assert (data["range"], data["step"], data["span"]) == (value, step, span)
            page.wait_for_function(
                "shown => ['#throughput-chart', '#latency-chart', '#queue-chart'].every("
                "id => document.querySelector(id).getAttribute('aria-label')"
                ".includes(`over the last ${shown}:`))",
                arg=shown,
            )
        board.shot("19-chart-range-1h")


def test_the_graph_shows_counters_moving_during_a_run(
    browser: Any, server: ServeProcess, artifacts: Path
) -> None:
    with opened(browser, server, artifacts) as board:
        page = board.page
        page.select_option("#pipeline-select", "slow")
        page.fill('#params [name="stop"]', "200")
        page.fill('#params [name="rate"]', "20")
        page.click("#run-button")
        page.wait_for_function("() => document.querySelector('#sv-links a')")
        page.click("#sv-links a")  # the run's page
        page.wait_for_selector("body[data-view=run] #rp-state[data-state=running]")
        out = '#rp-graph .node[data-stage="sinks.websocket"]'
        page.wait_for_function(f"() => Number(document.querySelector('{out}').dataset.out) > 3")
        first = int(str(page.get_attribute(out, "data-out")))
        page.wait_for_function(
            f"n => Number(document.querySelector('{out}').dataset.out) > n + 5", arg=first
        )
        second = int(str(page.get_attribute(out, "data-out")))
        assert 3 < first < second < 200
        board.shot("12-run-live-graph")
        page.click("#rp-cancel")
        page.wait_for_selector("#rp-state[data-state=cancelled]")


def test_the_errors_view_totals_equal_the_metrics(
    browser: Any, server: ServeProcess, artifacts: Path
) -> None:
    run_to_end(server, "skips")
    run_to_end(server, "fails")
    run_to_end(server, "skips")
    expected = metrics_errors(server)
    assert expected == 2 * 120 + 1
    with opened(browser, server, artifacts, "/errors") as board:
        page = board.page
        page.wait_for_function(
            "n => document.querySelector('#ev-total').dataset.total === String(n)", arg=expected
        )
        assert board.text("#ev-total") == f"{expected:,}"
        assert board.text("#ev-fatal") == "1"
        assert board.text("#ev-handled") == f"{expected - 1:,}"
        assert board.text("#ev-dead") == "240"
        board.shot("13-errors")
        page.select_option("#ev-pipeline", "fails")
        page.wait_for_function("() => document.querySelector('#ev-total').textContent === '1'")
        assert page.locator("#ev-fatal-list li").count() == 1
        assert "errors?pipeline=fails" in page.url


def test_the_page_marks_its_data_stale_when_the_server_dies_and_recovers(
    browser: Any, server: ServeProcess, artifacts: Path
) -> None:
    refused = re.compile(r"ERR_CONNECTION_REFUSED|WebSocket connection to .* failed")
    with opened(browser, server, artifacts, expected_errors=refused) as board:
        page = board.page
        page.select_option("#pipeline-select", "slow")
        page.fill('#params [name="stop"]', "100000")
        page.click("#run-button")
        page.wait_for_selector("#runs-table tbody .badge[data-state=running]")
        page.wait_for_selector("#cancel-button:enabled")
        server.kill()
        page.wait_for_selector("body[data-stale=true] #stale:not([hidden])")
        assert board.text("#stale").startswith("Disconnected since ")
        assert page.is_disabled("#cancel-button")
        assert page.is_disabled("#run-button")
        assert page.locator("#runs-table tbody .badge[data-state=running]").count() == 0
        assert page.locator("#runs-table tbody .badge[data-state=unknown]").count() == 1
        assert page.locator("#runs-table tbody button.danger:enabled").count() == 0
        board.shot("14-stale")
        server.start()
        page.wait_for_selector("#conn[data-state=open]")
        page.wait_for_function("() => !document.body.dataset.stale")
        assert page.locator("#stale").is_hidden()
        # the run the killed server left behind is recorded as interrupted
        page.wait_for_selector("#runs-table tbody .badge[data-state=interrupted]")
        board.shot("15-recovered")


TOKENS_CONFIG = CONFIG.replace(
    "host: 127.0.0.1\n",
    "host: 127.0.0.1\nauth:\n  tokens:\n    good: admin\n"
    "    narrow: {principal: bob, streams: ['slow-*'], pipelines: [slow]}\n",
)


def test_a_wrong_token_and_a_token_without_the_dashboard_are_told_so(
    browser: Any, tmp_path: Path, artifacts: Path
) -> None:
    server = ServeProcess(tmp_path, TOKENS_CONFIG)
    server.start()
    unauthorised = re.compile(r"401|WebSocket connection to .* failed")
    try:
        with opened(
            browser, server, artifacts, "/#token=wrong", live=False, expected_errors=unauthorised
        ) as board:
            page = board.page
            page.wait_for_selector("#auth:not([hidden])")
            page.wait_for_function(
                "() => document.querySelector('#auth-message').textContent"
                ".startsWith('Token rejected')"
            )
            board.shot("16-token-rejected")
            page.fill("#auth-token", "good")
            page.click("#auth button[type=submit]")
            page.wait_for_selector("#conn[data-state=open]")
            assert page.locator("#denied").is_hidden()
        forbidden = re.compile(r"403")  # the browser logs the refused /api/dashboard
        with opened(
            browser, server, artifacts, "/#token=narrow", expected_errors=forbidden
        ) as board:
            page = board.page
            page.wait_for_selector("#denied:not([hidden])")
            assert "may not see the dashboard" in board.text("#denied")
            page.wait_for_function(
                "() => document.querySelector('#runs-empty').textContent.includes('may not see')"
            )
            board.shot("17-token-without-dashboard")
    finally:
        server.stop()


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_every_view_fits_360_px_and_is_captured(
    browser: Any, server: ServeProcess, artifacts: Path, dark: bool
) -> None:
    failed, _ = run_to_end(server, "fails")
    run_to_end(server, "skips")
    good, _ = run_to_end(server, "slow", stop=30, rate=500)
    scheme = "dark" if dark else "light"
    for width in (1440, 360):
        for name, path in (("overview", "/"), ("run", f"/runs/{failed}"), ("errors", "/errors")):
            with opened(browser, server, artifacts, path, width=width, dark=dark) as board:
                page = board.page
                if name == "overview":
                    page.wait_for_function(
                        "() => document.querySelectorAll('#runs-table tbody tr').length >= 3"
                    )
                    page.wait_for_function(
                        "() => Number(document.querySelector('#throughput-chart')"
                        ".dataset.points) > 1"
                    )
                    page.locator(
                        f'#runs-table tbody tr[data-key="{good}"] button', has_text="View"
                    ).click()
                    page.wait_for_selector("#stream-view[data-state=complete]")
                elif name == "run":
                    page.wait_for_selector("#rp-fatal:not([hidden])")
                    page.wait_for_selector("#stream-view[data-state=complete]")
                else:
                    page.wait_for_function(
                        "() => document.querySelector('#ev-total').dataset.total > 0"
                    )
                scroll = page.evaluate("() => document.documentElement.scrollWidth")
                assert scroll <= width, f"{name} at {width} px is {scroll} px wide"
                if width == 360 and name == "overview":
                    # the runs table keeps its actions in view
                    box = page.locator("#runs-table tbody tr button").first.bounding_box()
                    assert box is not None
                    assert box["x"] + box["width"] <= width
                board.shot(f"20-{name}-{width}-{scheme}")
