"""Prometheus metrics of one server instance (its own registry, so several apps in one process stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "turnscribe_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.request_seconds = Histogram(
            "turnscribe_http_request_duration_seconds",
            "Time to answer (streams: to the first byte)",
            ["route"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "turnscribe_queue_depth", "Transcriptions waiting to start", ["kind"], registry=self.registry
        )
        self.audio_seconds = Counter("turnscribe_audio_seconds", "Seconds of audio transcribed", registry=self.registry)
        self.real_time_factor = Histogram(
            "turnscribe_real_time_factor",
            "Processing time divided by audio duration, per transcription",
            buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
            registry=self.registry,
        )
        self.batch_windows = Histogram(
            "turnscribe_decoder_batch_windows",
            "Windows per decoder call (across requests)",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
