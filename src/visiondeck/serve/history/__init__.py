"""Prediction history: the database table and the durable journal in front of it.

Every answered prediction reaches the local journal first (group commit), then the
database; the journal is only trimmed once the database has committed its rows.
"""
