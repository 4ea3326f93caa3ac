"""An app whose module fails to import inside its container (a dependency missing on the
worker), while it imports fine where it is deployed from."""

from __future__ import annotations

import os

import apothic

if os.environ.get("APOTHIC_CONTAINER_ID"):
    import apothic_dependency_that_does_not_exist  # noqa: F401

app = apothic.App("e2e-broken")


@app.function(timeout_s=30)
def unreachable() -> int:
    return 1
