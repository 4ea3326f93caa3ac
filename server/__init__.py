"""The Apothic control plane (``apothic.server``): gRPC services over a SurrealDB store.

Entry point: :func:`apothic.server.server.create_server`.
"""
