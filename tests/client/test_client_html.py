"""The HTML report is self-contained and shows highlighted documents, sentences and words in headless Chromium."""
from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from longshap.client.cli import main
from serving import DOCUMENTS, QUESTION

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (CI installs it: apt-get install -y chromium)")


class Highlights(HTMLParser):
    """Collects highlighted spans: (classes, title, background style)."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[dict] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and "hl" in (attrs.get("class") or "").split():
            self.spans.append(attrs)
        if tag in ("script", "link", "img") or (tag == "a" and attrs.get("href", "").startswith("http")):
            self.external.append(tag)


@pytest.fixture(scope="module")
def report(tiny_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    for doc in DOCUMENTS:
        (folder / f"{doc['title']}.txt").write_text(doc["text"], encoding="utf-8")
    path = folder / "report.html"
    argv = ["explain", "--server", tiny_server.address, "--question", QUESTION, "--budget", "30", "--json", "--html", str(path)]
    assert main([*argv, *[arg for doc in DOCUMENTS for arg in ("--doc", str(folder / f"{doc['title']}.txt"))]]) == 0
    return path


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


def test_report_is_self_contained_with_values_on_hover(report):
    page = Highlights()
    page.feed(report.read_text(encoding="utf-8"))
    assert not page.external
    levels = {cls for span in page.spans for cls in span["class"].split()} - {"hl"}
    assert levels == {"sentence", "word"}
    assert all(re.fullmatch(r"d\d(\.[sw]\d+)+: [+-]\d\.\d{4} ± (\d\.\d{4}|inf)", span["title"]) for span in page.spans)
    assert all(span["style"].startswith("background:rgba(") for span in page.spans)


@needs_chromium
def test_chromium_renders_the_highlighted_text(report, tmp_path):
    result = _chromium(tmp_path, "--dump-dom", report.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert "LongSHAP explanation" in dom and 'id="answer"' in dom
    assert re.search(r'<span class="hl sentence"[^>]*style="background:rgba\(', dom)
    assert re.search(r'<span class="hl word"[^>]*title="d\d\.s\d\.w\d+: ', dom)
    for doc in DOCUMENTS:  # every document's words are on the page, ranked sections for both
        visible = re.sub(r"<[^>]+>", "", dom)
        assert all(word in visible for word in doc["text"].split())
    assert dom.count('<section class="doc"') == len(DOCUMENTS)


@needs_chromium
def test_chromium_screenshot_shows_coloured_highlights(report, tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    shot = tmp_path / "shot.png"
    result = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1000,900", report.as_uri())
    assert shot.exists(), result.stderr[-2000:]
    colours = image_module.open(shot).convert("RGB").getcolors(1 << 24)
    tinted = sum(count for count, p in colours if max(p) - min(p) > 25 and min(p) > 60)  # green or red highlights, not text or white
    assert tinted > 500
