"""The chat page at / in a real headless Chromium (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import shutil

import pytest

from fedintel.serving.config import ServeConfig
from fedintel.serving.server import serve_in_thread

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def srv():
    cfg = ServeConfig.model_validate({"model": {"name": "smollm2-135m", "num_layers": 2},
                                      "paths": [{"name": "edge", "cuts": [1]}]})
    running = serve_in_thread(cfg)
    try:
        yield running
    finally:
        running.stop()


def test_chat_page_streams_an_answer(srv, tmp_path):
    if not shutil.which("chromium") and not __import__("os").path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (scripts/install.sh installs it as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                        headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(srv.url + "/")
            page.wait_for_function("document.querySelectorAll('#model option').length > 0")
            assert page.locator("#model option").first.text_content() == "base"
            page.fill("#maxtok", "24")
            page.fill("#prompt", "What is the capital of France?")
            page.press("#prompt", "Enter")
            page.wait_for_selector(".meta[data-done='1']", timeout=120_000)
            answer = page.locator("#answer-1").text_content() or ""
            meta = page.locator(".meta").last.text_content() or ""
        finally:
            browser.close()
    assert answer.strip(), "no streamed answer appeared"
    assert "served by base" in meta and "edge-s0" in meta and "edge-s1" in meta and "transport" in meta
