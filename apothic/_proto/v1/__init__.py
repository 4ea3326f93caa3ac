"""Generated protobuf stubs for apothic.v1."""
