"""Importers that turn public medical datasets into corpora in the project's format (docs/design.md §3, §8)."""
