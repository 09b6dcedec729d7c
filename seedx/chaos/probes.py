"""Special-token injection, auth on every route, schemathesis and the log audit (issue 9, items
8-10 and 12), against the running stack.

Special tokens are checked at the worker's prompt ids: a tap reads every job the gateway
enqueues (a plain ``XREAD`` on the job stream, beside the workers' consumer group), the worker's
own :func:`workers.llm.prompting.prepare_prompt` turns it into ids with the served tokenizer, and
the worker's reported ``prompt_tokens`` must equal their count (so the ids checked are the ones
it ran).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections import Counter
from typing import Any

import httpx

from seedx.chaos.load import MARKER, client_for, post
from seedx.chaos.stack import KEY, LLM_MODEL, Stack, metric_sum

Figures = dict[str, Any]


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _hostile_messages(tokens: list[str]) -> dict[str, list[dict[str, str]]]:
    """Every position: alone, start, middle, end, glued, repeated, other roles."""
    joined = " ".join(tokens)
    glued = "".join(tokens)
    user = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    return {
        "start": user(f"{joined} {MARKER} tail"),
        "middle": user(f"{MARKER} head {joined} tail"),
        "end": user(f"{MARKER} head {joined}"),
        "glued": user(f"{MARKER}{glued}x"),
        "system": [{"role": "system", "content": joined}, *user(MARKER)],
        "assistant history": [
            *user(MARKER),
            {"role": "assistant", "content": glued},
            *user(f"{MARKER} again"),
        ],
    }


async def special_tokens(stack: Stack, chunk: int = 24) -> Figures:
    """Every special and added token string of the served tokenizer, in every position."""
    from engine.image_rules import ImageRules
    from engine.tokenizer import SeedXTokenizer
    from workers.llm.prompting import prepare_prompt
    from workers.protocol import ChatJob

    folder = stack.config.serving / LLM_MODEL
    tok = SeedXTokenizer(folder)
    strings = sorted(set(tok._special_strings) | set(tok._added))  # every special string
    special = set(tok.special_ids) | {tok.token_to_id(t) for t in tok._added}
    rules = ImageRules(("1x1",), 448)
    stream = f"seedx:jobs:llm:{LLM_MODEL}"
    llm = stack.workers("llm")
    pids = {p.popen.pid for p in llm}
    errors_before = sum(
        metric_sum(stack.worker_metrics(p), "seedx_llm_engine_errors_total") for p in llm
    )
    redis = stack.redis_client()
    last = redis.xinfo_stream(stream)["last-generated-id"] if redis.exists(stream) else b"0-0"
    leaked = 0
    mismatched = 0
    requests = 0
    statuses: Counter[int] = Counter()
    async with client_for(stack) as client:
        for group in _chunks(strings, chunk):
            for messages in _hostile_messages(group).values():
                body = {"model": LLM_MODEL, "messages": messages, "max_tokens": 2}
                outcome = await post(client, "/v1/chat/completions", json=body, timeout_s=60)
                requests += 1
                statuses[outcome.status] += 1
                entries = redis.xread({stream: last}, count=1, block=5000)
                if not entries:
                    mismatched += 1
                    continue
                last, fields = entries[0][1][0]
                job = ChatJob.model_validate_json(fields[b"job"])
                ids = prepare_prompt(job, [[] for _ in job.messages], LLM_MODEL, tok, rules).ids
                base_job = _without(job, group)
                base = prepare_prompt(base_job, [[] for _ in job.messages], LLM_MODEL, tok, rules)
                extra = Counter(i for i in ids if i in special) - Counter(
                    i for i in base.ids if i in special
                )
                leaked += sum(extra.values())
                usage = outcome.body.get("usage", {}) if isinstance(outcome.body, dict) else {}
                mismatched += usage.get("prompt_tokens") != len(ids)
    redis.close()
    errors_after = sum(
        metric_sum(stack.worker_metrics(p), "seedx_llm_engine_errors_total") for p in llm
    )
    restarts = len(pids - {p.popen.pid for p in stack.workers("llm")})
    health = [httpx.get(f"http://127.0.0.1:{p.metrics_port}/healthz", timeout=5).status_code
              for p in stack.workers("llm")]  # fmt: skip
    return {
        "token_strings": len(strings),
        "requests": requests,
        "statuses": dict(statuses),
        "special_ids_from_user_text": leaked,
        "prompt_token_mismatches": mismatched,
        "engine_errors": errors_after - errors_before,
        "engine_restarts": restarts + sum(1 for h in health if h != 200),
    }


def _without(job: Any, tokens: list[str]) -> Any:
    """``job`` with every token string in its text replaced by a plain word (same shape)."""
    from workers.protocol import TextPart

    def clean(text: str) -> str:
        for token in sorted(tokens, key=len, reverse=True):
            text = text.replace(token, "plain")
        return text

    messages = tuple(
        m.model_copy(update={"content": tuple(
            TextPart(text=clean(p.text)) if isinstance(p, TextPart) else p for p in m.content
        )})
        for m in job.messages
    )  # fmt: skip
    return job.model_copy(update={"messages": messages})


def _routes(stack: Stack) -> list[tuple[str, str]]:
    spec = httpx.get(f"{stack.base_url}/openapi.json", headers=stack.auth, timeout=10).json()
    routes = []
    for path, operations in spec["paths"].items():
        for method in operations:
            routes.append((method.upper(), re.sub(r"\{[^}]+\}", "x", path)))
    routes += [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/metrics")]
    return sorted(set(routes))


OPEN_BY_DESIGN = frozenset({"/healthz", "/readyz", "/", "/playground"})


async def auth(stack: Stack) -> Figures:
    """Every route with no key and with wrong keys of every kind: no 2xx."""
    wrong = {
        "none": None,
        "empty bearer": "Bearer ",
        "wrong same length": "Bearer " + "x" * len(KEY),
        "shorter": "Bearer " + KEY[:-1],
        "longer": "Bearer " + KEY + "0",
        "prefix of key": "Bearer " + KEY[:8],
        "case changed": "Bearer " + KEY.upper(),
        "basic scheme": "Basic " + KEY,
        "no scheme": KEY,
        "key with nul": "Bearer " + KEY + "\x00",
    }
    routes = [r for r in _routes(stack) if r[1] not in OPEN_BY_DESIGN]
    unauthenticated_2xx = []
    checked = 0
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as client:
        for method, path in routes:
            for name, header in wrong.items():
                headers = {} if header is None else {"Authorization": header}
                try:
                    response = await client.request(method, path, headers=headers, json={})
                    status = response.status_code
                except httpx.HTTPError:
                    status = 0  # refused by the client library itself (e.g. a NUL byte)
                checked += 1
                if 200 <= status < 300:
                    unauthenticated_2xx.append(f"{method} {path} ({name})")
    return {
        "routes": len(routes),
        "requests": checked,
        "unauthenticated_2xx": len(unauthenticated_2xx),
        "offenders": unauthenticated_2xx,
    }


def schemathesis_run(stack: Stack, max_examples: int, phases: str, timeout_s: float) -> Figures:
    """``st run`` against the live gateway's spec: the not-a-server-error check only."""
    argv = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{stack.base_url}/openapi.json",
        "--checks", "not_a_server_error", "-H", f"Authorization: Bearer {KEY}",
        "--max-examples", str(max_examples), "--phases", phases, "--seed", "9",
        "--generation-deterministic", "--request-timeout", "60", "--workers", "2",
        "--suppress-health-check", "all",
    ]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        output, code = str(exc.stdout or ""), -1
    server_errors = len(re.findall(r"Server error", output))
    errors = output[output.find("ERRORS") :][:1500] if "ERRORS" in output else ""
    return {
        "errors": errors,
        "phases": phases,
        "exit_code": code,
        "server_errors": server_errors,
        "summary": "\n".join(output.strip().splitlines()[-6:]),
    }


_B64_RUN = re.compile(r"[A-Za-z0-9+/]{200,}={0,2}")
_LEVELS = ("INFO", "WARNING", "ERROR", "CRITICAL")


def _is_info_or_above(line: str) -> bool:
    try:
        record = json.loads(line)
        return str(record.get("level", "")).upper() in _LEVELS
    except ValueError:
        return any(f" {level} " in line or line.startswith(level) for level in _LEVELS)


def logs(stack: Stack) -> Figures:
    """Scan every process's log: API keys, prompts at INFO or above, base64 payloads."""
    keys = prompts = payloads = 0
    examples: list[str] = []
    for name, text in stack.logs().items():
        for line in text.splitlines():
            hit = False
            if KEY in line:
                keys += 1
                hit = True
            if MARKER in line and _is_info_or_above(line):
                prompts += 1
                hit = True
            if _B64_RUN.search(line):
                payloads += 1
                hit = True
            if hit and len(examples) < 5:
                examples.append(f"{name}: {line[:300]}")
    return {
        "lines": sum(t.count("\n") for t in stack.logs().values()),
        "api_keys": keys,
        "prompts_at_info": prompts,
        "base64_payloads": payloads,
        "examples": examples,
    }


def run_sync(coro: Any) -> Any:
    return asyncio.run(coro)
