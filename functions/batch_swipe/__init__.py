"""batch-swipe: Many swipes in one request; matches exactly once."""
