"""spaces stage."""
