"""Generated gRPC stubs (``apothic._proto.v1``). Never edit by hand: run
``python -m apothic._proto.generate``."""
