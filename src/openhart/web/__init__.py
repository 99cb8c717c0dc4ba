"""The web UI of `openhart serve` (Gradio)."""
