"""The LLM worker (issue 4): SEED-X in one vLLM ``AsyncLLM`` engine.

* :mod:`.types` — the engine-facing request and the events a generation yields.
* :mod:`.engine` — :class:`~workers.llm.engine.SeedXLLMEngine`, independent of Redis.
* :mod:`.choice` — one answer's generation loop (segments split at generated images).
* :mod:`.text` — incremental display text, stop strings and boxes of one answer.
* :mod:`.prompting` — chat / text-to-image / edit prompts with their images.
* :mod:`.worker` — the Redis worker process (``seedx worker llm``).
"""
