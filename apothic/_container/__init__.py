"""What runs inside a container process: import one function once, then serve inputs.

The worker talks to it over a socket pair (``protocol``); ``python -m apothic._container``
is the entry point.
"""
