"""Apps the e2e tests deploy. Containers import these modules from the deployed source
archive, so they live in importable files with their ``App`` at module level."""
