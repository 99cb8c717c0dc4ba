"""Text encoders that turn prompts into the transformer's prefix features."""
