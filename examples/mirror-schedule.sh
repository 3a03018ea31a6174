#!/usr/bin/env bash
# Mirror a team's public dependencies into pypapo every night, so that every tool can use pypapo alone
# (`provision client-config --tool TOOL --public-index none`) and installs never reach PyPI.
#
# 1. Lock the public dependencies once (and whenever they change), from PyPI, for every platform:
#      uv pip compile --universal --generate-hashes requirements.in -o requirements.txt
#    (uv.lock, pylock.toml or poetry.lock work as well). Keep private names out of it: the mirror
#    refuses any name that is published privately in the index.
# 2. Put the lock where the scheduled build can read it, and create the schedule:
#      Cloud Scheduler -> Cloud Build (service account pypapo-mirror-build, the index bucket's
#      publisher role) -> `provision mirror --repo gs://BUCKET --from https://pypi.org/simple/ --lock gs://...`
#    The build installs pypapo from the wheel in the index bucket (publish it there first:
#    `provision publish --repo gs://BUCKET dist/pypapo-*.whl`), never from PyPI.
#    `--dry-run` prints every request first (no credentials needed).
set -euo pipefail

PROJECT="${PROJECT:?set PROJECT}"
ZONE="${ZONE:-us-central1-a}"
BUCKET="${BUCKET:-$PROJECT-pypapo}"
LOCK="gs://$BUCKET-locks/requirements.txt"

gcloud storage cp requirements.txt "$LOCK" --project "$PROJECT"
provision mirror schedule --project "$PROJECT" --zone "$ZONE" --bucket "$BUCKET" \
  --lock "$LOCK" --python-version 3.11 --python-version 3.12 --platform linux_x86_64 \
  --cron "0 4 * * *" --time-zone Etc/UTC "$@"
