"""``/v1/responses``: OpenAI's Responses API, served by translating each request onto the chat
completions path (``server.chat``) and rendering its outputs as Responses objects and events."""
