"""Known speakers over HTTP, and the limits that protect the server: chunked uploads over the size limit, a full
job queue, a client that goes away mid-request, an upload that stalls."""

from __future__ import annotations

import base64
import io
import socket
import time
import wave
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_pipeline import FakeEmbedder, write_wav
from test_server import (
    KEY,
    TIMEOUT,
    HeldDecoder,
    assert_error,
    data_url,
    job,
    job_call,
    post,
    running,
    sdk,
    settings_for,
    wait_until,
)

from turnscribe import Pipeline
from turnscribe.speakers import SlotLinker
from turnscribe.types import SAMPLE_RATE
from turnscribe.windows import plan_windows

MAX_UPLOAD = 4 << 20


def signed(seconds: float, sign: float) -> np.ndarray:
    """A tone riding on an offset: the FakeEmbedder tells clips apart by the sign of their mean."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (sign * 0.2 + 0.05 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def conversation(tmp_path_factory) -> Path:
    """70 s where each window's second scripted speaker (5-8 s into the window) has a negative offset."""
    audio = signed(70, +1)
    for span in plan_windows(len(audio)):
        start = int((span.start + 5.0) * SAMPLE_RATE)
        audio[start : start + 3 * SAMPLE_RATE] = signed(3, -1)
    path = tmp_path_factory.mktemp("conversation") / "conversation.wav"
    write_wav(path, audio)
    return path


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("voices")
    urls = {}
    for name, sign in (("Alice", -1), ("Bob", +1), ("Carol", +1)):
        write_wav(folder / f"{name}.wav", signed(3, sign))
        urls[name] = data_url(folder / f"{name}.wav")
    return urls


@pytest.fixture(scope="module")
def limited_held() -> HeldDecoder:
    return HeldDecoder()


@pytest.fixture(scope="module")
def limited_server(limited_held, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("limited-server")
    settings = settings_for(
        data,
        max_upload_bytes=MAX_UPLOAD,
        job_workers=1,
        max_queued_jobs=1,
        upload_timeout_s=1.0,
        max_known_speakers=2,
        retention_s=0.0,
        janitor_interval_s=0.05,
    )
    with running(settings, lambda: Pipeline(limited_held, SlotLinker(FakeEmbedder()))) as url:
        yield url, data


@pytest.fixture
def limited(limited_server, limited_held) -> Iterator[str]:
    limited_held.reset()
    yield limited_server[0]
    limited_held.gate.set()


# --- known speakers ----------------------------------------------------------------------------------------


def test_known_speakers_name_the_matching_speakers(limited, conversation, voices):
    def create(names: list[str]) -> dict[str, str]:
        with conversation.open("rb") as f:
            result = sdk(limited).audio.transcriptions.create(
                model="gpt-4o-transcribe-diarize",
                file=f,
                response_format="diarized_json",
                known_speaker_names=names,
                known_speaker_references=[voices[n] for n in names],
            )
        return {s.text: s.speaker for s in result.segments}

    both = create(["Alice", "Bob"])
    assert len(both) == 6
    assert {both[f"window {i} two"] for i in range(3)} == {"Alice"}
    assert {both[f"window {i} one"] for i in range(3)} == {"Bob"}
    # Unmatched speakers keep a number; a reference matching nobody names nobody.
    alice_only = create(["Alice"])
    assert {alice_only[f"window {i} two"] for i in range(3)} == {"Alice"}
    assert {alice_only[f"window {i} one"] for i in range(3)} == {"SPEAKER_00"}
    # Without references the same recording has two anonymous speakers.
    with conversation.open("rb") as f:
        plain = sdk(limited).audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=f, response_format="diarized_json"
        )
    assert {s.speaker for s in plain.segments} == {"SPEAKER_00", "SPEAKER_01"}


def test_jobs_keep_their_known_speakers_until_the_audio_goes(limited_server, limited, conversation, voices):
    url, data = limited_server
    created = post(
        url,
        conversation,
        endpoint="/v1/audio/jobs",
        response_format="diarized_json",
        **{"known_speaker_names[]": ["Alice"], "known_speaker_references[]": [voices["Alice"]]},
    )
    assert created.status_code == 202, created.text
    assert created.json()["known_speaker_names"] == ["Alice"]
    job_id = created.json()["id"]
    wait_until(lambda: job(url, job_id)["status"] == "succeeded", what="the job to finish")
    result = job_call("GET", url, f"/{job_id}/result").json()
    assert {s["speaker"] for s in result["segments"] if "two" in s["text"]} == {"Alice"}
    # Retention is 0 s: the reference clips are removed with the recording.
    wait_until(lambda: job(url, job_id)["known_speaker_names"] == [], what="the references to be removed")


def test_known_speakers_bad_values(limited, voices, conversation):
    wav = conversation.read_bytes()
    three = {"known_speaker_names[]": ["Alice", "Bob", "Carol"], "known_speaker_references[]": list(voices.values())}
    assert "at most 2" in assert_error(post(limited, None, content=wav, **three), 400)["message"]
    clip = {"known_speaker_names[]": ["A"], "known_speaker_references[]": ["data:audio/wav;base64,AAAA"]}
    assert assert_error(post(limited, None, content=wav, **clip), 400)["param"] == "known_speaker_references"
    same = {"known_speaker_names[]": ["A", "A"], "known_speaker_references[]": [voices["Bob"]] * 2}
    assert assert_error(post(limited, None, content=wav, **same), 400)["param"] == "known_speaker_names"
    unpaired = {"known_speaker_names[]": ["A", "B"], "known_speaker_references[]": [voices["Bob"]]}
    assert "give one of each" in assert_error(post(limited, None, content=wav, **unpaired), 400)["message"]
    silence = io.BytesIO()
    with wave.open(silence, "wb") as out:  # 3 s of digital silence: a valid length, no voice
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\x00" * 96000)
    silent_url = "data:audio/wav;base64," + base64.b64encode(silence.getvalue()).decode()
    silent = {"known_speaker_names[]": ["Quiet"], "known_speaker_references[]": [silent_url]}
    error = assert_error(post(limited, None, content=wav, **silent), 400)
    assert error["param"] == "known_speaker_references" and "silent" in error["message"]
    assert assert_error(post(limited, None, content=wav, **same), 400)["param"] == "known_speaker_names"


# --- limits --------------------------------------------------------------------------------------------------


def multipart(size: int, boundary: str = "turnscribe-test-boundary") -> tuple[bytes, str]:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-4o-transcribe-diarize\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    return head + b"\x00" * size + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_chunked_upload_over_the_limit_is_413(limited_server, limited, conversation):
    url, data = limited_server
    body, content_type = multipart(3 * MAX_UPLOAD)

    def chunks() -> Iterator[bytes]:  # a generator body: sent chunked, with no Content-Length to refuse early
        for i in range(0, len(body), 64 << 10):
            yield body[i : i + (64 << 10)]

    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": content_type}
    try:
        response = httpx.post(f"{url}/v1/audio/transcriptions", content=chunks(), headers=headers, timeout=TIMEOUT)
    except httpx.WriteError:  # the server may close before the client has sent it all: read what it said
        pytest.fail("the server closed the connection without an answer")
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert_error(response, 413, "file_too_large")
    assert not any((data / "uploads" / "requests").iterdir())
    assert post(url, conversation, response_format="text").status_code == 200  # and it keeps serving


def test_full_job_queue_is_429_with_retry_after(limited_server, limited, limited_held, conversation):
    url, _ = limited_server
    limited_held.hold_from = 0  # the first job holds the only job worker
    first = post(url, conversation, endpoint="/v1/audio/jobs").json()["id"]
    wait_until(lambda: job(url, first)["status"] == "running", what="the first job to start")
    second = post(url, conversation, endpoint="/v1/audio/jobs")
    assert second.status_code == 202 and second.json()["status"] == "queued"
    full = post(url, conversation, endpoint="/v1/audio/jobs")
    assert_error(full, 429, "queue_full")
    assert int(full.headers["Retry-After"]) > 0
    limited_held.gate.set()
    for job_id in (first, second.json()["id"]):
        wait_until(lambda job_id=job_id: job(url, job_id)["status"] == "succeeded", what=f"{job_id} to finish")


def test_a_client_that_goes_away_stops_its_run(limited_server, limited, limited_held, tmp_path):
    url, _ = limited_server
    path = tmp_path / "long.wav"
    write_wav(path, signed(120, +1))  # 5 windows, under the 4 MiB upload limit
    limited_held.hold_from = 0
    limited_held.batch_size = 1  # one window per batch: the run checks for a stop between windows
    with ThreadPoolExecutor(1) as pool:
        # The client gives up after 1 s, while window 0 is still held, and closes its connection.
        gone = pool.submit(
            httpx.post,
            f"{url}/v1/audio/transcriptions",
            data={"model": "gpt-4o-transcribe-diarize"},
            files={"file": ("a.wav", path.read_bytes())},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=1.0,
        )
        with pytest.raises(httpx.ReadTimeout):
            gone.result(TIMEOUT)

    def closed_seen() -> bool:
        metrics = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
        return 'route="/v1/audio/transcriptions",status="499"' in metrics

    wait_until(closed_seen, what="the server to notice the client left")
    limited_held.gate.set()
    time.sleep(1.0)  # time enough for the other windows, had the run gone on
    # Window 0, and at most the window queued ahead of it (the look-ahead), never the rest of the file.
    decoded = [i for batch in limited_held.batches for i in batch]
    assert decoded[0] == 0 and len(decoded) <= 2, decoded


def send_head_and(url: str, body: bytes, *, key: str = KEY, length: int, content_type: str) -> tuple[str, float]:
    """POST a request's head and then `body`, less than `length` says, and nothing more: the server must answer
    without the rest, and close. Its answer, and the seconds until it began to arrive."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(
            (
                f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
            ).encode()
            + body
        )
        started = time.monotonic()
        answer = sock.recv(65536).decode(errors="replace")
        seconds = time.monotonic() - started
        while chunk := sock.recv(65536):
            answer += chunk.decode(errors="replace")
    return answer, seconds


def test_a_stalled_upload_is_408(limited_server, limited):
    url, data = limited_server
    body, content_type = multipart(MAX_UPLOAD // 2)
    answer, seconds = send_head_and(url, body[:1000], length=len(body), content_type=content_type)
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert '"upload_timeout"' in answer and 0.9 < seconds < 10
    assert not any((data / "uploads" / "requests").iterdir())


def test_a_wrong_key_is_refused_before_the_upload_is_read(limited_server, limited):
    url, _ = limited_server
    _, content_type = multipart(0)
    # Not a byte of the body is sent: without the key checked first, the server would wait for it (408 after 1 s).
    answer, seconds = send_head_and(url, b"", key="wrong", length=MAX_UPLOAD - 1, content_type=content_type)
    assert answer.startswith("HTTP/1.1 401"), answer[:200]
    assert '"invalid_api_key"' in answer and "connection: close" in answer.lower() and seconds < 0.9
