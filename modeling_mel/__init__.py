"""modeling-mel."""
