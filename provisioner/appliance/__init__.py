"""The serving VM: render -> serve / verify. Its startup script, units, NGINX and gcsfuse configs.

May import `repo` (the layout it serves); nothing of `cloud`, `access` or `cli`.
"""
