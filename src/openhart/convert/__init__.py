"""Conversion of model folders (the official HART release in particular) to openhart's layout.

- `official`: the official config field and state-dict key names, and the readers of official
  folders that `openhart.loading` uses. It imports nothing above loading.
- `checkpoint`: `convert_official_checkpoint`, which writes a folder in openhart's layout; it sits
  above `openhart.hub` and `openhart.loading`, so this package imports neither module itself.
"""
