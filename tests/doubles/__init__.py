"""Doubles shared by the tests: stand-ins for Google Cloud APIs that have no emulator.

Each double replaces the API's *clients* (injected with `Clients(overrides=...)`), never pypapo's thin
layer, so everything in `provisioner/cloud/gcp/` runs for real in the tests.
"""
