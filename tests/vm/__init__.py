"""The `vm` integration test: a booted Debian 12 system (systemd-nspawn) running the rendered appliance."""
