"""Schemathesis against the gateway's own OpenAPI document: no input may cause a 5xx.

Runs in-process on the ASGI app with the fake backend (workers answer instantly, images render
as tiny PNGs), authenticated, with a bounded number of examples per operation so the unit tier
stays fast; issue 9's reliability suite runs the long, stateful version.
"""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error

from server.app import create_app
from tests.unit.server.conftest import AUTH, make_settings
from tests.unit.server.fakes import FakeBackend


def _app() -> object:
    backend = FakeBackend(llm_images=1)
    for stage, model in (
        ("llm", "seed-x-i"),
        ("llm", "seed-x-edit"),
        ("diffusion", "first_stage"),
        ("diffusion", "second_stage"),
    ):
        backend.serve(stage, model)  # type: ignore[arg-type]
    return create_app(make_settings(), backend)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app(), headers=AUTH)


@schema.parametrize()
@hypothesis.settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_no_server_errors(case: schemathesis.Case) -> None:
    response = case.call(headers=AUTH)
    case.validate_response(response, checks=[not_a_server_error])
