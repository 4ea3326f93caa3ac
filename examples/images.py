"""Images: the environment a function runs in, built once per content and reused.

apothic run examples/images.py

`apothic.Image` chains steps from a base. The deploy builds each image on the workers
(with the default process executor: a virtualenv made by uv, cached by the image's
content hash), prints the build's output, and fails with the failing step and the end of
its output when a step fails. Run it twice: the second deploy says "already built".
"""

import os
from pathlib import Path

import apothic

HERE = Path(__file__).resolve().parent

image = (
    apothic.Image.debian_slim()
    .pip_install("six==1.17.0")  # from PyPI; pip_install(..., find_links=DIR, no_index=True) works offline
    .env({"GREETING": "hello from the image"})
    .workdir("/app")
    .add_local_file(HERE / "quickstart.py", "quickstart_copy.py")  # relative: under the workdir
    .run_commands("echo built at $(date -u +%Y-%m-%d) > build-info.txt")
)

app = apothic.App("images-example")


@app.function(image=image, timeout_s=60)
def describe() -> dict[str, str]:
    """Reports what the image put in place."""
    import six  # installed by the image, not by the caller

    return {
        "six": six.__version__,
        "greeting": os.environ["GREETING"],
        "workdir": os.path.basename(os.getcwd()),
        "files": ", ".join(sorted(os.listdir("."))),
        "build_info": open("build-info.txt").read().strip(),
    }


@app.local_entrypoint()
def main() -> None:
    """Runs locally after the app is deployed (and its image built)."""
    for key, value in describe.remote().items():
        print(f"{key:>10}: {value}")
