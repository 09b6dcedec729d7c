"""``DiffusionWorkerSettings``: environment, nesting, startup checks, the CLI entry."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
from pydantic import ValidationError

from seedx.cli import build_parser
from workers.diffusion.settings import DiffusionWorkerSettings


def test_environment_and_nested_redis(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEEDX_DIFFUSION_MODEL", str(tmp_path))
    monkeypatch.setenv("SEEDX_DIFFUSION_DETOKENIZER", "second_stage")
    monkeypatch.setenv("SEEDX_DIFFUSION_MAX_BATCH", "8")
    monkeypatch.setenv("SEEDX_DIFFUSION_REDIS__URL", "redis://redis:6379/3")
    monkeypatch.setenv("SEEDX_DIFFUSION_QUEUE__LEASE_S", "60")
    settings = DiffusionWorkerSettings()  # type: ignore[call-arg]
    assert settings.model == tmp_path
    assert settings.stream_model == "second_stage"
    assert settings.held_jobs == 16
    assert settings.redis.url == "redis://redis:6379/3"
    assert settings.queue.lease_s == 60


def test_every_field_is_described() -> None:
    for name, field in DiffusionWorkerSettings.model_fields.items():
        if name not in ("redis", "queue"):
            assert field.description, name


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"capacity": 2, "max_batch": 4}, "capacity"),
        ({"batch_wait_s": 2.0, "starvation_s": 1.0}, "starvation_s"),
        ({"detokenizer": "third_stage"}, "detokenizer"),
        ({"max_steps": 200}, "max_steps"),
    ],
)
def test_bad_configuration_fails_at_startup(
    tmp_path: Path, changes: dict[str, object], match: str
) -> None:
    with pytest.raises(ValidationError, match=match):
        DiffusionWorkerSettings(model=tmp_path, **changes)  # type: ignore[arg-type]


def test_cli_flags_override_the_environment(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["worker", "diffusion", "--model", str(tmp_path), "--detokenizer", "second_stage",
         "--redis-url", "redis://elsewhere:6379/0", "--max-batch", "2"]
    )  # fmt: skip
    serve = mock.MagicMock()
    with (
        mock.patch("workers.diffusion.worker.serve", serve),
        mock.patch("workers.diffusion.worker.configure_logging") as configure,
        mock.patch("workers.runloop.run"),
    ):
        assert args.handler(args) == 0
    configure.assert_called_once_with("info")
    (settings,) = serve.call_args.args
    assert settings.detokenizer == "second_stage"
    assert settings.redis.url == "redis://elsewhere:6379/0"
    assert settings.max_batch == 2
