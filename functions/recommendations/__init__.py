"""recommendations: A filtered, ranked, cached deck of candidates."""
