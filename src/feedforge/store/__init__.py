"""The online store: interface, key layout, embedded (SQLite) and Redis backends."""
