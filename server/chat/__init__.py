"""``POST /v1/chat/completions``: router (HTTP), schema (request), service (orchestration),
respond/render (the answer's OpenAI shapes)."""
