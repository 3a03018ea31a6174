"""Reaching the index: the IAP tunnel and the client configuration of pip, uv, poetry, pdm, pipenv, conda.

May import `repo` and `cloud` (settings, names); nothing of `appliance` or `cli`.
"""
