"""Click commands, one module per concern. The logic they call lives in the modules of `provisioner`."""
