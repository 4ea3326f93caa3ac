"""Secrets: environment variables a function gets, kept encrypted by the control plane.

apothic run examples/secrets.py

A named secret is created once (`apothic secret create db DB_PASSWORD=...`, or
`apothic.Secret.create`) and referenced with `apothic.Secret.from_name("db")`; the deploy
fails when it does not exist. `apothic.Secret.from_dict` sends values with the deploy
itself. A later secret's key overrides an earlier one's. Values never show in reprs,
listings or errors.
"""

import os

import apothic

app = apothic.App("secrets-example")

# Inline values travel with the deploy; in real code read them from your own environment.
api = apothic.Secret.from_dict({"API_TOKEN": "example-token", "API_URL": "https://api.example.com"})


@app.function(timeout_s=30, secrets=[api])
def call_api() -> str:
    """Reads its secret from the environment, as any library would."""
    token = os.environ["API_TOKEN"]
    return f"calling {os.environ['API_URL']} with a token of {len(token)} characters"


@app.local_entrypoint()
def main() -> None:
    """Runs locally after the app is deployed."""
    print(call_api.remote())
    print("the secret prints as", repr(api))

    # Named secrets: create, list (names and keys only), delete.
    name = "secrets-example-db"
    apothic.Secret.create(name, {"DB_PASSWORD": "example-password"}, overwrite=True)
    for info in apothic.Secret.list():
        if info.name == name:
            print(f"secret {info.name} sets {', '.join(info.keys)}")
    apothic.Secret.delete(name)
