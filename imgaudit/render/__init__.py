"""Renderers: each reads a `Report` (or a listing) and returns text; none of them decides anything."""
