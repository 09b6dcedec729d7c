"""The chart pointed at an external Sentinel-managed Redis: the redis+sentinel:// URL reaches
every process through the Redis Secret, the sentinels' password from a Secret of the user's,
the NetworkPolicy lets the clients reach the sentinels' port too, and a plain URL with
``sentinel.enabled`` is refused at render time."""

from __future__ import annotations

from typing import Any

from tests.deploy.conftest import RELEASE, Render, find, helm_template, workloads

P = f"{RELEASE}-seedx"
URL = "redis+sentinel://seedx:pw@s0.redis:26379,s1.redis:26379/mymaster/0"
SETS = [
    "redis.bundled=false",
    f"redis.external.url={URL.replace(',', chr(92) + ',')}",
    "redis.external.sentinel.enabled=true",
    "redis.external.sentinel.passwordSecret=sentinel-auth",
    "apiKeys.keys={integration-key-0123}",
]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def test_every_process_gets_the_sentinel_url_and_password(render: Render) -> None:
    docs = render(sets=SETS)
    secret = find(docs, "Secret", f"{P}-redis")
    assert secret["stringData"]["url"] == URL
    seen = 0
    for workload in workloads(docs):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            env = _env(container)
            urls = [name for name in env if name.endswith("_REDIS__URL")]
            for name in urls:
                prefix = name.removesuffix("REDIS__URL")
                ref = env[f"{prefix}REDIS__SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"]
                assert ref == {"name": "sentinel-auth", "key": "sentinel-password"}
                seen += 1
    assert seen >= 3  # gateway, LLM worker, diffusion worker


def test_the_clients_may_reach_the_sentinels(render: Render) -> None:
    docs = render(sets=SETS)
    policy = find(docs, "NetworkPolicy", f"{P}-redis-clients")
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert {6379, 26379} <= ports


def test_no_sentinel_password_env_without_its_secret(render: Render) -> None:
    docs = render(sets=SETS[:3] + SETS[4:])
    for workload in workloads(docs):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            assert not any(n.endswith("SENTINEL_PASSWORD") for n in _env(container))


def test_a_plain_url_with_sentinel_enabled_is_refused(helm: str) -> None:
    sets = [s for s in SETS if not s.startswith("redis.external.url=")]
    result = helm_template(helm, sets=[*sets, "redis.external.url=redis://r:6379/0"], check=False)
    assert result.returncode != 0
    assert "redis+sentinel://" in result.stderr
