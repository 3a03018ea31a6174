"""Deployment on Google Cloud: settings -> plan -> apply, and the golden image; API calls only in `gcp/`.

May import `repo` and `appliance` (what it deploys); nothing of `access` or `cli`.
"""
