"""The conda channel under `conda/` in a repository location: packages, repodata, CEP 16 shards."""
