"""The browsable site under `ui/`: pure rendering (readme.py, its bounds.py; render.py) and its writer
(writer.py).

Part of `repo`: imports nothing outside it. Derived pages only, never read back to compute state.
"""
