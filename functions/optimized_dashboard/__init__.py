"""optimized-dashboard: A user's spending dashboard, fast and cached."""
