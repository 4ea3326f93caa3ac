"""The Apothic worker (``apothic.worker``): dials the control plane, runs containers."""
