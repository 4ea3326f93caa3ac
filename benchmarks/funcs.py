"""Functions the benchmarks deploy.

They live in a module of their own so they ship by module (a source archive that the
container imports), the way an app written in a file does, rather than by value.
"""

from __future__ import annotations

from typing import Any

import apothic

app = apothic.App("apothic-bench")


@app.function()
def echo(x: Any) -> Any:
    """Returns its argument unchanged: the call itself is what is measured."""
    return x
