"""Test-time search with process reward models (built on prm)."""
