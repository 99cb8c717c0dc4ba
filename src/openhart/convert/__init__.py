"""Conversion from the official HART release layout."""
