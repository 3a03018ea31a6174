"""The repository engine: dist -> validate -> store -> pages. What is written into the bucket, and how.

Imports nothing of `cloud`, `appliance`, `access` or `cli` (and never click): it runs in CI jobs and
on an admin's machine with only a bucket in reach.
"""
