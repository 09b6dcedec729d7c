"""``Idempotency-Key`` on the POST routes that create work (see :mod:`.middleware`)."""

from server.idempotency.middleware import IdempotencyMiddleware, IdempotentRuns
from server.idempotency.records import RequestRecords

__all__ = ["IdempotencyMiddleware", "IdempotentRuns", "RequestRecords"]
