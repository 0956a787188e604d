"""Adapters that plug qtts into other frameworks; each needs its framework installed (an optional extra)."""
