"""The web page, driven in a real headless Chromium (playwright) against the server on loopback."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from test_pipeline import FakeEmbedder, tone, write_wav
from test_server import KEY, TIMEOUT, HeldDecoder, library_result, running, settings_for, two_voices
from test_server_scripted import script

from turnscribe import Pipeline
from turnscribe.decoders import ScriptedDecoder
from turnscribe.speakers import ClusteringLinker

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (apt-get install chromium)")
WAIT_MS = int(TIMEOUT * 1000)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    settings = settings_for(tmp_path_factory.mktemp("web"), janitor_interval_s=0.05)
    with running(settings, lambda: Pipeline(ScriptedDecoder(script), ClusteringLinker(FakeEmbedder()))) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@contextmanager
def opened(browser, url: str) -> Iterator[object]:
    """The web page of the server at `url`, in a browser context of its own."""
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(url + "/")
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def page(browser, server):
    with opened(browser, server) as page:
        yield page


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recording") / "meeting.wav"
    write_wav(path, tone(70))
    return path


def transcribe(page, path: Path, key: str = KEY) -> None:
    page.fill("#key", key)
    page.set_input_files("#file", str(path))
    page.select_option("#language", "en")
    page.click("#start")


def rows(page) -> list[tuple[str, str]]:
    return [
        (row.query_selector("td.speaker").inner_text(), row.query_selector_all("td")[3].inner_text())
        for row in page.query_selector_all("#transcript tbody tr")
    ]


def test_a_recording_is_transcribed_shown_and_downloaded(page, server, recording):
    assert page.title() == "turnscribe"
    assert page.locator("#language option").count() == 14
    transcribe(page, recording)
    page.wait_for_selector("#result:not([hidden])")
    expected = library_result(recording)
    assert rows(page) == [(speaker, text) for _, _, text, speaker in expected]
    assert page.inner_text("#message").startswith("Done: meeting.wav")
    job_id = page.evaluate("location.hash").removeprefix("#job=")

    with page.expect_download() as download:
        page.click("#downloads button[data-format=srt]")
    assert download.value.suggested_filename == "meeting.srt"
    served = httpx.get(
        f"{server}/v1/audio/jobs/{job_id}/result",
        params={"response_format": "srt"},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=TIMEOUT,
    ).text
    assert Path(download.value.path()).read_text() == served and "SPEAKER_00: window 0 one" in served

    # The job id is in the URL: a reload shows the same transcript without uploading again.
    page.reload()
    page.wait_for_selector("#result:not([hidden])")
    assert rows(page) == [(speaker, text) for _, _, text, speaker in expected]


def test_the_number_of_speakers_given_on_the_page_reaches_the_job(page, server, tmp_path):
    page.fill("#speakers", "1")
    transcribe(page, two_voices(tmp_path / "call.wav", 70))  # two speakers without the hint
    page.wait_for_selector("#result:not([hidden])")
    assert {speaker for speaker, _ in rows(page)} == {"SPEAKER_00"}
    job_id = page.evaluate("location.hash").removeprefix("#job=")
    status = httpx.get(f"{server}/v1/audio/jobs/{job_id}", headers={"Authorization": f"Bearer {KEY}"}, timeout=TIMEOUT)
    assert status.json()["num_speakers"] == 1


def test_errors_from_the_api_are_shown(page, recording, tmp_path):
    transcribe(page, recording, key="wrong-key")
    page.wait_for_selector("#message.error")
    assert "API key" in page.inner_text("#message")
    assert page.is_hidden("#result")

    notes = tmp_path / "notes.wav"
    notes.write_text("not audio at all\n")
    transcribe(page, notes)
    page.wait_for_function("document.querySelector('#message').textContent.includes('notes.wav')")
    assert page.is_visible("#message.error")


def test_the_page_keeps_following_a_job_while_the_server_cannot_answer(page, recording):
    # A restarting server first answers nothing, then 503 while it loads its model; then the job is still there.
    not_ready = {"error": {"message": "Not ready", "type": "server_error", "param": None, "code": "not_ready"}}
    outages = [lambda route: route.abort(), lambda route: route.fulfill(status=503, json=not_ready)]

    def flaky(route) -> None:
        if outages:
            outages.pop(0)(route)
        else:
            route.continue_()

    page.route("**/v1/audio/jobs/job_*", flaky)  # the job's status, not its upload or result
    transcribe(page, recording)
    page.wait_for_function("document.querySelector('#message').textContent.includes('not answering')")
    page.wait_for_selector("#result:not([hidden])")
    assert not outages and rows(page) == [(speaker, text) for _, _, text, speaker in library_result(recording)]


def test_the_language_menu_starts_at_the_servers_default_language(browser, tmp_path):
    # A server for German recordings: its page must not send English for every file the user does not set.
    settings = settings_for(tmp_path, default_language="DE")  # as --language takes it
    pipeline = Pipeline(ScriptedDecoder(script), ClusteringLinker(FakeEmbedder()))
    with running(settings, lambda: pipeline) as url, opened(browser, url) as page:
        assert page.input_value("#language") == "de"


def test_times_are_rounded_before_they_are_split_into_minutes(page):
    times = [0, 5.04, 59.96, 61.04, 125.97, 3600]
    assert page.evaluate(f"{times}.map(clock)") == ["0:00.0", "0:05.0", "1:00.0", "1:01.0", "2:06.0", "60:00.0"]


@pytest.fixture(scope="module")
def held() -> HeldDecoder:
    return HeldDecoder()


@pytest.fixture(scope="module")
def held_server(held, tmp_path_factory) -> Iterator[str]:
    settings = settings_for(tmp_path_factory.mktemp("web-held"))
    with running(settings, lambda: Pipeline(held, ClusteringLinker(FakeEmbedder()))) as url:
        yield url


@pytest.fixture
def held_page(browser, held_server, held):
    held.reset()
    held.hold_from = 0  # jobs stay running until the test ends
    with opened(browser, held_server) as page:
        yield page
    held.gate.set()


def test_a_second_job_takes_the_page_over_from_the_first(held_page, held_server, recording):
    page = held_page
    transcribe(page, recording)
    page.wait_for_function("document.querySelector('#message').textContent.startsWith('Transcribing')")
    first = page.evaluate("location.hash").removeprefix("#job=")
    transcribe(page, recording)
    page.wait_for_function(f"location.hash.startsWith('#job=') && location.hash !== '#job={first}'")
    second = page.evaluate("location.hash").removeprefix("#job=")
    # The first job's loop polls every 400 ms: by the second job's third poll it has woken and stopped, and
    # must have left the page (its Cancel button above all) to the second job.
    for _ in range(3):
        with page.expect_request(lambda request: request.url.endswith(f"/v1/audio/jobs/{second}")):
            pass
    assert page.is_visible("#cancel")
    page.click("#cancel")
    page.wait_for_function("document.querySelector('#message').textContent.includes('cancelled')")
    statuses = {
        job_id: httpx.get(
            f"{held_server}/v1/audio/jobs/{job_id}", headers={"Authorization": f"Bearer {KEY}"}, timeout=TIMEOUT
        ).json()["status"]
        for job_id in (first, second)
    }
    assert statuses == {first: "running", second: "cancelled"}
