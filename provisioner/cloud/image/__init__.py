"""The golden image: `plan` (pure: names, requests, steps), `run` (build, rollout over the thin layer),
`schedule` (the unattended rebuild: Cloud Scheduler -> Cloud Build)."""
