"""``seedx bench chaos``: the whole stack under overload, crashes and hostile input (issue 9).

:mod:`seedx.chaos.stack` starts a private Valkey (AOF on, so it can be restarted mid-run), the
gateway and real LLM/diffusion workers on the tiny checkpoint as child processes with short
leases; :mod:`seedx.chaos.scenarios` and :mod:`seedx.chaos.hostile` each run one scenario and
return its figures; :mod:`seedx.chaos.bench` runs them all and prints the table. The reliability
suite (``tests/reliability``) runs the same scenarios with reduced counts and asserts the goals,
so the figures in the table and the checks in CI come from one implementation.
"""
