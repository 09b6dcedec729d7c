"""``GET /v1/models``: the models live workers serve."""
