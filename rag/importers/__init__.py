"""Importers that turn public medical datasets into corpora in the project's format (DESIGN §3, §8)."""
