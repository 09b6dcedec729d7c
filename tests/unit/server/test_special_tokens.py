"""Special-token strings typed by users never become special ids (issue 6; issue 9, item 8).

Decision: *escape by construction*. The gateway passes text unchanged (checked in
``test_chat.py``); the LLM worker builds every prompt with ``engine.prompts.build_prompt``, where
message text is encoded by ``SeedXTokenizer.encode_parts`` as plain SentencePiece pieces. This
test runs the gateway's job through that same path (and through the worker's own
``prepare_prompt`` when vLLM is installed) and counts special ids coming from user text: the
ids of a prompt with hostile text must equal those of a prompt with the same text where no
special string can match, minus nothing — i.e. the only added-token ids are the template's.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from engine.checkpoint.tokenizer_files import write_tokenizer_folder
from engine.prompts import Turn, build_prompt, chat_template
from engine.tokenizer import SeedXTokenizer
from tests.unit.server.fakes import FakeBackend
from workers.protocol import ChatJob, TextPart

SPECIALS = [
    "<s>",
    "</s>",
    "<unk>",
    "<img>",
    "</img>",
    "<patch>",
    "</patch>",
    "<img_00000>",
    "<img_00063>",
    "<img_00099>",
    "<box_start>",
    "<box_end>",
    "<loc-0>",
    "<loc-223>",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> SeedXTokenizer:
    folder: Path = tmp_path_factory.mktemp("tok")
    write_tokenizer_folder(folder)
    return SeedXTokenizer(folder)


def hostile_texts() -> list[str]:
    texts = []
    for token in SPECIALS:
        texts += [token, f"a {token} b", f"{token}x", f"x{token}", token * 3]
    texts.append("".join(SPECIALS))
    return texts


async def _job_for(client: httpx.AsyncClient, backend: FakeBackend, text: str) -> ChatJob:
    backend.jobs.clear()
    body = {"messages": [{"role": "user", "content": text}]}
    assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
    job = backend.jobs[0]
    assert isinstance(job, ChatJob)
    return job


def _user_text(job: ChatJob) -> str:
    part = job.messages[0].content[0]
    assert isinstance(part, TextPart)
    return part.text


async def test_no_special_ids_from_user_text(
    client: httpx.AsyncClient, backend: FakeBackend, tok: SeedXTokenizer
) -> None:
    template_ids = set(build_prompt(tok, chat_template("seed-x-i", [Turn("user", "")])).ids)
    special = tok.special_ids | {tok.token_to_id(t) for t in SPECIALS}
    for text in hostile_texts():
        job = await _job_for(client, backend, text)
        assert _user_text(job) == text
        ids = build_prompt(tok, chat_template("seed-x-i", [Turn("user", _user_text(job))])).ids
        from_user = [i for i in ids if i in special and i not in template_ids]
        assert from_user == [], f"{text!r} produced special ids {from_user}"
        assert ids.count(tok.bos_id) == 1
        assert tok.eos_id not in ids


async def test_the_llm_workers_own_prompt_path(
    client: httpx.AsyncClient, backend: FakeBackend, tok: SeedXTokenizer
) -> None:
    pytest.importorskip("vllm", reason="the LLM worker's prompting imports vLLM")
    from engine.image_rules import ImageRules
    from workers.llm.prompting import prepare_prompt

    rules = ImageRules(("1x1",), 448)
    clean = prepare_prompt(
        await _job_for(client, backend, "plain words"), [[]], "seed-x-i", tok, rules
    )
    template = set(clean.ids)
    special = tok.special_ids | {tok.token_to_id(t) for t in SPECIALS}
    for text in hostile_texts():
        job = await _job_for(client, backend, text)
        prompt = prepare_prompt(job, [[]], "seed-x-i", tok, rules)
        leaked = [i for i in prompt.ids if i in special and i not in template]
        assert leaked == [], f"{text!r} produced special ids {leaked}"
