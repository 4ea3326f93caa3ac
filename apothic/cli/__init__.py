"""The `apothic` command line."""
