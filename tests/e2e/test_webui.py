"""The web UI in a real headless Chromium (Playwright), against a real `drca serve` on loopback.

Browser policy: the tests drive Debian's `chromium` (`/usr/bin/chromium`, or `$DRCA_CHROMIUM`) with
`--headless --no-sandbox --disable-gpu`; Playwright never downloads a browser. When the browser (or the
`playwright` package) is missing the tests FAIL, which is what CI wants (`.ci/run` installs chromium).
Locally, `DRCA_SKIP_BROWSER_TESTS=1` turns that failure into a skip.

Screenshots are saved as artifacts under `$DRCA_TEST_ARTIFACTS/webui/` (default: `test-artifacts/webui/`
at the repository root). The README's screenshot (docs/img/search-results.png) is `search-text-results.png`
from this test, checked by eye before it was copied there (see the README).

What the text-search check proves: the server runs the tiny random test checkpoint, whose text head and
classifier are noise, so it is started with the head and class weights of the text score at 0
(`DRCA_TEXT_WEIGHT_HEAD=0`, `DRCA_TEXT_WEIGHT_CLASS=0`). What remains is the metadata term (MiniLM
similarity of the query to `external_id . title`): the test proves that the UI sends the text query,
that titles typed on the upload page reach the index, and that the page shows the ranking in order. It
says nothing about the model's understanding of video content. The video-query check does depend on
the embeddings: a re-encoded, cropped copy finds its original first (as in tests/e2e/test_serve.py).
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_serve import ROOT, Server
from tests.service.media import lavfi_video, near_duplicate, tiny_checkpoint

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # reported by the `browser` fixture (fail in CI, skip with DRCA_SKIP_BROWSER_TESTS=1)
    sync_playwright = None

CHROMIUM = Path(os.environ.get("DRCA_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
SKIP_ALLOWED = os.environ.get("DRCA_SKIP_BROWSER_TESTS") == "1"
ARTIFACTS = Path(os.environ.get("DRCA_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "webui"
TIMEOUT_MS = 60_000
MAX_UPLOAD = 2_000_000  # bytes; the generated videos are far smaller

# Four visually distinct generated videos (6 s, 240x180, 10 fps: two 4-s segments with the tiny checkpoint;
# fixed seeds, so the screenshots repeat),
# with the external id and title typed on the upload page.
VIDEOS = {
    "smpte-bars": ("smptebars=size=240x180:rate=10:duration=6", "SMPTE colour bars test signal"),
    "mandelbrot-zoom": ("mandelbrot=size=240x180:rate=10,trim=duration=6", "zooming into the Mandelbrot fractal"),
    "gradient-sweep": ("gradients=size=240x180:rate=10:duration=6:speed=0.05:seed=3", "soft colour gradients drifting"),
    "sierpinski": ("sierpinski=size=240x180:rate=10:seed=3,trim=duration=6", "Sierpinski carpet pattern"),
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    problem = None
    if sync_playwright is None:
        problem = "the 'playwright' package is not installed (pip install -e '.[dev]')"
    elif not CHROMIUM.is_file():
        problem = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set DRCA_CHROMIUM)"
    if problem:
        if SKIP_ALLOWED:
            pytest.skip(f"{problem}; skipped because DRCA_SKIP_BROWSER_TESTS=1")
        pytest.fail(f"{problem}. The browser tests need it; set DRCA_SKIP_BROWSER_TESTS=1 to skip them locally.")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("webui-media")
    out = {name: lavfi_video(root / f"{name}.mp4", src) for name, (src, _) in VIDEOS.items()}
    out["query"] = near_duplicate(out["smpte-bars"], root / "bars-copy.mp4")
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, media) -> Path:
    """The tiny checkpoint, with a match threshold in its card halfway between the copy's score against the
    bars and its best score against the other videos (computed here with the service's encoder), so the
    page shows one copy and the rest as similar."""
    path = tiny_checkpoint(tmp_path_factory.mktemp("webui-ckpt") / "tiny")
    import numpy as np

    from service.encoding.encoder import VideoEncoder
    from service.settings import Settings

    enc = VideoEncoder(Settings(checkpoint=path, data_dir=tmp_path_factory.mktemp("webui-enc"), device="cpu",
                                runtime="torch", text_search=False))
    query = enc.forward(enc.decode(media["query"], query=True).clips)[0]
    scores = {name: float((query @ enc.forward(enc.decode(media[name]).clips)[0].T).max()) for name in VIDEOS}
    copy, other = scores.pop("smpte-bars"), max(scores.values())
    assert copy > other + 0.01, (copy, other)
    card = json.loads((path / "card.json").read_text())
    card["match"] = {"min_score": round(float(np.mean([copy, other])), 6), "calibration": "test: between the copy and the rest"}
    (path / "card.json").write_text(json.dumps(card))
    return path


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("webui-server")
    srv = Server(checkpoint, tmp / "data", tmp / "server.log",
                 env={"DRCA_TEXT_WEIGHT_HEAD": "0", "DRCA_TEXT_WEIGHT_CLASS": "0",
                      "DRCA_MAX_UPLOAD_BYTES": str(MAX_UPLOAD)})
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def new_page(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1100, "height": 760}, base_url=url)
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.js_errors = errors  # checked at the end of each test: the app must not throw
    return page


def shot(page: Page, name: str, down_to: str | None = None) -> None:
    """Save a screenshot; with `down_to`, only from the top of the page to that element's bottom edge."""
    clip = None
    if down_to is not None:
        box = page.locator(down_to).bounding_box()
        clip = {"x": 0, "y": 0, "width": page.viewport_size["width"], "height": box["y"] + box["height"] + 24}
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), clip=clip)


def wait_thumbnails(page: Page) -> None:
    """Every card's thumbnail on the page is a decoded JPEG (not a broken image)."""
    page.wait_for_function("""() => {
        const imgs = [...document.querySelectorAll('[data-testid=results] img')];
        return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
    }""")


def hit_titles(page: Page) -> list[str]:
    return page.get_by_test_id("hit-title").all_inner_texts()


def search_video(page: Page, path: Path) -> None:
    page.goto("/#/")
    page.get_by_test_id("search-file").set_input_files(str(path))
    expect(page.locator("[data-testid=results][data-query=video] [data-testid=hit]").first).to_be_visible()


@pytest.mark.slow
def test_upload_search_play_delete(browser, server, media):
    page = new_page(browser, server.url)

    # upload: four files at once, each with an external id and a title; wait until every job is done
    page.goto("/#/upload")
    page.get_by_test_id("upload-files").set_input_files([str(media[name]) for name in VIDEOS])
    rows = page.get_by_test_id("upload-row")
    expect(rows).to_have_count(len(VIDEOS))
    for i, (name, (_, title)) in enumerate(VIDEOS.items()):
        assert name in rows.nth(i).inner_text()
        rows.nth(i).get_by_label(re.compile("External id")).fill(name)
        rows.nth(i).get_by_label(re.compile("Title")).fill(title)
    page.get_by_test_id("upload-start").click()
    expect(page.get_by_test_id("upload-summary")).to_have_text(f"{len(VIDEOS)} ingested, 0 failed.")
    for i in range(len(VIDEOS)):
        expect(rows.nth(i).get_by_test_id("upload-status")).to_contain_text("done")
    shot(page, "upload-done")
    videos = {v["external_id"]: v for v in httpx.get(server.url + "/v1/videos").json()["videos"]}
    assert set(videos) == set(VIDEOS) and all(v["status"] == "indexed" for v in videos.values())

    # the library (no query) shows all four with thumbnails
    page.goto("/#/")
    expect(page.get_by_test_id("library-video")).to_have_count(len(VIDEOS))
    wait_thumbnails(page)
    shot(page, "library")

    # text search: the title typed at upload ranks its video first (see the module docstring)
    page.get_by_test_id("search-text").fill("Mandelbrot fractal zoom")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("[data-testid=results][data-query=text] [data-testid=hit]")).to_have_count(len(VIDEOS))
    assert hit_titles(page)[0] == "mandelbrot-zoom"
    wait_thumbnails(page)
    shot(page, "search-text-results", down_to="[data-testid=results]")  # the README's screenshot

    # video search: a cropped, re-encoded copy of the bars finds the bars first, marked as a copy (the card's
    # threshold), with its copied span; the others are marked similar
    search_video(page, media["query"])
    expect(page.get_by_test_id("hit")).to_have_count(len(VIDEOS))
    assert hit_titles(page)[0] == "smpte-bars"
    assert page.get_by_test_id("verdict").all_inner_texts() == ["COPY"] + ["SIMILAR"] * (len(VIDEOS) - 1)
    expect(page.get_by_test_id("hit-spans")).to_have_count(1)
    expect(page.get_by_test_id("hit").first.get_by_test_id("hit-spans")).to_contain_text("copied: 0:00–0:06")
    wait_thumbnails(page)
    shot(page, "search-video-results")

    # the video page: starts at the matched segment, the video element can play
    first = page.get_by_test_id("hit").first
    start = float(re.search(r"t=([\d.]+)", first.get_attribute("href")).group(1))
    first.click()
    expect(page.get_by_test_id("video-title")).to_have_text("smpte-bars")
    expect(page.get_by_test_id("video-status")).to_contain_text("indexed")
    expect(page.get_by_test_id("labels-bar")).to_have_count(5)
    page.wait_for_function("() => document.querySelector('[data-testid=player]').readyState >= 2")
    at = page.evaluate("""async () => {
        const v = document.querySelector('[data-testid=player]');
        const at = v.currentTime;
        v.muted = true;  // autoplay policy: a muted video may play without a user gesture
        await v.play();
        return at;
    }""")
    assert abs(at - start) < 0.25, (at, start)  # arrived at the matched segment
    page.wait_for_function("(at) => document.querySelector('[data-testid=player]').currentTime > at + 0.3", arg=at)
    played = page.evaluate("""() => {
        const v = document.querySelector('[data-testid=player]');
        return { paused: v.paused, error: v.error && v.error.code, duration: v.duration };
    }""")
    assert played["error"] is None and not played["paused"], played  # it plays
    assert abs(played["duration"] - 6.0) < 0.5, played
    page.evaluate("() => document.querySelector('[data-testid=player]').pause()")
    shot(page, "video-page")

    # delete with the confirmation: cancel first (nothing happens), then delete
    bars_id = videos["smpte-bars"]["video_id"]
    page.get_by_test_id("delete").click()
    dialog = page.get_by_test_id("confirm-delete")
    expect(dialog).to_be_visible()
    shot(page, "delete-confirmation")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    assert httpx.get(f"{server.url}/v1/videos/{bars_id}").status_code == 200
    page.get_by_test_id("delete").click()
    page.get_by_test_id("confirm-delete-button").click()
    expect(page).to_have_url(re.compile(r"#/$"))
    assert httpx.get(f"{server.url}/v1/videos/{bars_id}").status_code == 404

    # gone from search: the same video query no longer returns it
    search_video(page, media["query"])
    expect(page.get_by_test_id("hit")).to_have_count(len(VIDEOS) - 1)
    assert "smpte-bars" not in hit_titles(page)
    shot(page, "search-after-delete")
    assert page.js_errors == []
    page.close()


@pytest.mark.slow
def test_classify_and_upload_errors(browser, server, media, tmp_path):
    page = new_page(browser, server.url)
    page.goto("/#/classify")
    page.get_by_test_id("classify-file").set_input_files(str(media["mandelbrot-zoom"]))
    expect(page.get_by_test_id("classify-bar")).to_have_count(5)
    shot(page, "classify")

    # drag and drop: a file dropped on the drop area (a DataTransfer built in the page) is classified too
    page.goto("/#/")
    page.goto("/#/classify")
    page.evaluate("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], "dropped.mp4", { type: "video/mp4" }));
        document.querySelector('.dropzone').dispatchEvent(new DragEvent('drop', { dataTransfer: data, bubbles: true }));
    }""", base64.b64encode(media["sierpinski"].read_bytes()).decode())
    expect(page.get_by_test_id("classify-status")).to_have_text("Top 5 labels for dropped.mp4")
    expect(page.get_by_test_id("classify-bar")).to_have_count(5)

    # a file that is not a video: refused with a plain-words error on its row, not a crash
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("this is not a video\n" * 50)
    page.goto("/#/upload")
    page.get_by_test_id("upload-files").set_input_files(str(bogus))
    page.get_by_test_id("upload-start").click()
    status = page.get_by_test_id("upload-status")
    expect(status.first).to_contain_text("This file could not be read as a video")
    expect(page.get_by_test_id("upload-summary")).to_have_text("0 ingested, 1 failed.")

    # a file over the server's upload limit: refused while it streams (413), also said in plain words
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(3 * MAX_UPLOAD))
    page.get_by_test_id("upload-files").set_input_files(str(big))
    page.get_by_test_id("upload-start").click()
    expect(page.get_by_test_id("upload-summary")).to_have_text("0 ingested, 2 failed.")
    expect(status.nth(1)).to_contain_text("The file is larger than this server accepts")
    shot(page, "upload-error")
    assert page.js_errors == []
    page.close()


@pytest.mark.slow
def test_api_key_mode(browser, checkpoint, media, tmp_path):
    """With an API key: the app asks for it, keeps it in session storage, sends it as the bearer token, and
    thumbnails and the video (fetched with the header, played from a blob URL) still load."""
    key = "webui-test-key"
    srv = Server(checkpoint, tmp_path / "data", tmp_path / "server.log", "--api-key", key)
    srv.start()
    try:
        with open(media["sierpinski"], "rb") as f:
            up = httpx.post(srv.url + "/v1/videos", files={"file": ("s.mp4", f)}, data={"external_id": "sierpinski"},
                            headers={"Authorization": f"Bearer {key}"})
        assert up.status_code == 202, up.text
        page = new_page(browser, srv.url)
        page.goto("/#/")
        expect(page.locator("#banner")).to_contain_text("needs an API key")
        page.locator("#api-key").fill(key)
        page.get_by_role("button", name="Use").click()
        expect(page.get_by_test_id("library-video")).to_have_count(1)
        page.wait_for_function("""() => {
            const img = document.querySelector('[data-testid=library-video] img');
            return img && img.src.startsWith('blob:') && img.complete && img.naturalWidth > 0;
        }""")  # the thumbnail, fetched with the bearer header
        assert page.evaluate("() => sessionStorage.getItem('drca.apiKey')") == key
        expect(page.locator("#banner")).to_be_hidden()
        page.get_by_test_id("library-video").click()
        expect(page.get_by_test_id("video-status")).to_contain_text("indexed", timeout=TIMEOUT_MS)
        page.wait_for_function("() => document.querySelector('[data-testid=player]').readyState >= 2")
        assert page.evaluate("() => document.querySelector('[data-testid=player]').src").startswith("blob:")
        shot(page, "api-key-video-page")
        assert page.js_errors == []
        page.close()
    finally:
        srv.stop()
