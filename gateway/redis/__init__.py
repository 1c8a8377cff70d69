"""Reaching Redis: the URL forms we accept (url.py), one client for every topology (connect.py), and cluster
hash slots (slots.py)."""
