"""Bounded load test of `turnscribe serve` on loopback: N concurrent clients send a fixed number of requests.

The server runs in this process (uvicorn in a thread) with a decoder that stands in for the model: it answers
scripted token streams after sleeping `--call-ms + --window-ms × windows` per call, the shape of a GPU's batched
generate() cost, so the numbers show the server's overhead and what cross-request batching buys. Clients use
the official openai SDK. It prints latency percentiles, throughput, the decoder batch sizes it saw, and fails
(exit 1) on any 5xx or transport error. It stops by itself after `--requests` requests.

    python benchmarks/server_load.py --clients 50 --requests 500
"""

from __future__ import annotations

import argparse
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import openai
import uvicorn

from turnscribe import Pipeline, build_pipeline
from turnscribe.decoders import ScriptedDecoder, WindowAudio
from turnscribe.server import ServerSettings, create_app
from turnscribe.types import SAMPLE_RATE


class SimulatedDecoder(ScriptedDecoder):
    def __init__(self, batch_size: int, call_s: float, window_s: float) -> None:
        super().__init__(
            lambda span: f"<|spltoken0|><|t:1.0|> window {span.index} <|t:3.0|><|spltoken1|><|t:4.0|> reply <|t:6.0|>",
            batch_size=batch_size,
        )
        self.call_s, self.window_s = call_s, window_s
        self.batches: list[int] = []

    def decode(self, windows: Sequence[WindowAudio], language: str) -> list[str]:
        self.batches.append(len(windows))
        time.sleep(self.call_s + self.window_s * len(windows))
        return super().decode(windows, language)


def write_tone(path: Path, seconds: float) -> None:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16).reshape(1, -1)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per request (20 s = one window)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=32, help="server: transcriptions at once")
    parser.add_argument("--call-ms", type=float, default=40.0, help="simulated fixed cost of one decoder call")
    parser.add_argument("--window-ms", type=float, default=5.0, help="simulated cost per window in a call")
    args = parser.parse_args()

    decoder = SimulatedDecoder(args.batch_size, args.call_ms / 1000, args.window_ms / 1000)
    with tempfile.TemporaryDirectory() as tmp:
        audio = Path(tmp) / "tone.wav"
        write_tone(audio, args.seconds)
        body = audio.read_bytes()
        settings = ServerSettings(
            data_dir=Path(tmp) / "data", api_keys=("bench",), workers=args.workers, max_queue=args.requests
        )
        pipeline: Pipeline = build_pipeline(decoder=decoder, device="cpu")
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(create_app(settings, lambda: pipeline), log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{sock.getsockname()[1]}/v1", api_key="bench", max_retries=0, timeout=120
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                client.models.list()
                break
            except openai.APIError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

        def one(_: int) -> float:
            started = time.perf_counter()
            result = client.audio.transcriptions.create(
                model="gpt-4o-transcribe-diarize", file=("tone.wav", body), response_format="diarized_json"
            )
            assert result.segments, result
            return time.perf_counter() - started

        errors: list[str] = []

        def safe(i: int) -> float | None:
            try:
                return one(i)
            except Exception as e:  # counted and reported: the run must not stop half-way
                errors.append(f"{type(e).__name__}: {e}")
                return None

        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            latencies = [t for t in pool.map(safe, range(args.requests)) if t is not None]
        elapsed = time.perf_counter() - started
        server.should_exit = True
        thread.join(30)

    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(
        f"{args.requests} requests of {args.seconds:g} s audio, {args.clients} concurrent clients, "
        f"decoder batch ≤ {args.batch_size}, simulated cost {args.call_ms:g} ms/call + {args.window_ms:g} ms/window"
    )
    print(f"ok {len(latencies)}, errors {len(errors)}")
    print(f"latency p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms")
    print(
        f"throughput {len(latencies) / elapsed:.1f} requests/s, {len(latencies) * args.seconds / elapsed:.0f} s audio/s"
    )
    print(f"decoder calls {len(decoder.batches)}, mean batch {statistics.mean(decoder.batches):.1f} windows")
    for error in errors[:5]:
        print("error:", error, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
