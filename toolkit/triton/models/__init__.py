"""Triton Python-backend model templates: copied into repositories, never imported."""
