"""SEED-X hosted in vLLM: the model class, its multimodal processor, the §5.5 decoding rules and
the image-query row capture (issue 4).

How the pieces fit (see ``workers/llm/engine.py`` for the driver):

* :mod:`.model` — ``SeedXForCausalLM``: vLLM's LLaMA trunk plus our own ViT and agent
  (``engine.agent.PictureEncoder``), loaded from the serving layout (``model.*``, ``lm_head.*``,
  ``vit.*``, ``agent.*``). One copy of every weight, the output resampler included.
* :mod:`.processor` — the any-res rules inside vLLM: one user image becomes its tiles plus the
  global view. Prompts arrive as token ids with every image block already expanded (our prompt
  builder writes them, with SEED-X's trained tokenization); the processor only locates each
  image's block and marks its 64-query runs as embedding slots.
* :mod:`.rules` — a logits processor with the image-token rules of §5.5 and the
  "image required" rule of ``engine.reference`` (``force_image_after``).
* :mod:`.lifeline` — vLLM's child processes end when the LLM worker that started them dies.
* :mod:`.capture` — a worker extension that records the final-norm hidden states at the 64
  query positions of a generated image block and runs the output resampler on them.

:func:`register` is the ``vllm.general_plugins`` entry point: vLLM calls it in every process
that may build a model (front end, engine core, workers).
"""

from __future__ import annotations

ARCHITECTURE = "SeedXForCausalLM"


def register() -> None:
    """Registers ``SeedXForCausalLM`` with vLLM's model registry (lazily imported), and ties
    a vLLM child process's life to its parent's."""
    from vllm import ModelRegistry

    from .lifeline import follow_parent, quick_teardown

    follow_parent()
    quick_teardown()

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "engine.vllm_plugin.model:SeedXForCausalLM")
