"""Reaching the index: the IAP tunnel. (Client configuration is pure text that the site's install
snippets share: it lives in `provisioner.repo.clientconfig`.)

May import `repo` and `cloud` (settings, names); nothing of `appliance` or `cli`.
"""
