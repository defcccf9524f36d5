"""schemathesis against the served OpenAPI schema: generated requests never get a 5xx or an undocumented answer.

Operations are walked with schemathesis' Python API (its pytest plugin needs a pytest it supports); each gets
a bounded number of hypothesis examples.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from test_server import KEY, HeldDecoder, linker, running, settings_for

from turnscribe import Pipeline

EXAMPLES = 12


def excluded(case: schemathesis.Case) -> list:
    # No schema can say "a decodable audio file" or "a data URL of 2-10 s of audio": uploads that fit the schema
    # but are not audio are rightly refused with a documented 400, which this check would count as a failure.
    uploads = case.operation.method.upper() == "POST" and case.operation.path in (
        "/v1/audio/transcriptions",
        "/v1/audio/jobs",
    )
    return [schemathesis.checks.positive_data_acceptance] if uploads else []


def test_generated_requests_get_documented_answers(tmp_path):
    decoder = HeldDecoder()
    with running(settings_for(tmp_path), lambda: Pipeline(decoder, linker())) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 10
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(
                    headers={"Authorization": f"Bearer {KEY}"}, timeout=30, excluded_checks=excluded(case)
                )

            check()
