"""A stateful class: @enter once per instance, a @batched method, a generator method.

apothic run examples/classes.py
"""

from collections.abc import Iterator

import apothic

app = apothic.App("classes")


@app.cls()
class Vocabulary:
    """Word ids that stay in the instance between calls."""

    def __init__(self, language: str) -> None:
        self.language = language

    @apothic.enter()
    def load(self) -> None:
        """Runs once per instance, in its container (load a model here)."""
        self.ids: dict[str, int] = {}

    @apothic.method()
    def size(self) -> int:
        """An ordinary method: one call, one value."""
        return len(self.ids)

    @apothic.batched(max_batch_size=8, wait_ms=100)
    def lookup(self, words: list[str]) -> list[int]:
        """Receives a list; callers still pass one word each."""
        print(f"{self.language}: a batch of {len(words)}")
        return [self.ids.setdefault(w, len(self.ids)) for w in words]

    @apothic.method()
    def spell(self, word: str) -> Iterator[str]:
        """A generator method: its items stream back as they are produced."""
        yield from word


@app.local_entrypoint()
def main() -> None:
    """Looks words up in batches, then streams one word's letters."""
    vocab = Vocabulary.named("english", "en")
    words = ["a", "b", "a", "c", "d", "b", "e", "f", "a", "g"]
    print("ids:", list(vocab.lookup.map(words)))
    print("distinct words:", vocab.size.remote())
    print("letters:", list(vocab.spell.remote_gen("apothic")))
