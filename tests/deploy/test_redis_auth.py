"""The bundled Redis has a password: a generated Secret (kept across upgrades), ``--requirepass``
from it, protected mode on, and every process's Redis URL from that Secret, never from values."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlsplit

from tests.deploy.conftest import CHART, RELEASE, find, workloads

P = f"{RELEASE}-seedx"


def _secret(docs: list[dict[str, Any]]) -> dict[str, str]:
    data = find(docs, "Secret", f"{P}-redis")["data"]
    return {key: base64.b64decode(value).decode() for key, value in data.items()}


def _env(container: dict[str, Any], name: str) -> dict[str, Any]:
    (entry,) = [e for e in container.get("env", []) if e["name"] == name]
    assert isinstance(entry, dict)
    return entry


def test_the_bundled_redis_gets_a_generated_password_in_a_secret(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name in ("defaults", "keda", "tiny-demo"):
        secret = _secret(rendered[name])
        password = secret["password"]
        assert len(password) == 32
        assert password.isalnum()
        url = urlsplit(secret["url"])
        assert url.password == password
        assert url.hostname == f"{P}-redis.seedx.svc"
        assert url.port == 6379
        assert password not in str(rendered[name]).replace(secret["url"], "")  # only in there


def test_the_password_is_kept_across_upgrades() -> None:
    """``helm template`` has no cluster for ``lookup``: the template is read instead."""
    text = (CHART / "templates" / "secrets.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in text
    assert 'index $existing.data "password" | b64dec' in text
    assert "randAlphaNum 32" in text


def test_the_redis_container_requires_the_password_with_protected_mode_on(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["defaults"]
    (redis,) = find(docs, "StatefulSet", f"{P}-redis")["spec"]["template"]["spec"]["containers"]
    command: list[str] = redis["command"]
    assert command[command.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert command[command.index("--protected-mode") + 1] == "yes"
    for name in ("REDIS_PASSWORD", "REDISCLI_AUTH", "VALKEYCLI_AUTH"):  # probes: valkey-cli
        ref = _env(redis, name)["valueFrom"]["secretKeyRef"]
        assert ref == {"name": f"{P}-redis", "key": "password"}


def test_gateway_and_workers_read_the_url_from_the_secret(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name in ("defaults", "keda"):
        seen = set()
        for workload in workloads(rendered[name]):
            if workload["metadata"]["name"] == f"{P}-redis":
                continue
            for container in workload["spec"]["template"]["spec"]["containers"]:
                refs = [e for e in container.get("env", []) if e["name"].endswith("_REDIS__URL")]
                if not refs:
                    continue
                assert "value" not in refs[0]
                ref = refs[0]["valueFrom"]["secretKeyRef"]
                assert ref == {"name": f"{P}-redis", "key": "url"}
                seen.add(refs[0]["name"].split("_")[1])
        assert seen == {"GATEWAY", "LLM", "DIFFUSION"}, seen


def test_keda_authenticates_with_the_bundled_password(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["keda"]
    auth = find(docs, "TriggerAuthentication", f"{P}-redis")["spec"]["secretTargetRef"]
    assert auth == [{"parameter": "password", "name": f"{P}-redis", "key": "password"}]
    for doc in docs:
        if doc["kind"] == "ScaledObject":
            for trigger in doc["spec"]["triggers"]:
                assert trigger["authenticationRef"] == {"name": f"{P}-redis"}
