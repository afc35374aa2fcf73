"""Paths of the original library, kept so that stored method configs keep working."""
