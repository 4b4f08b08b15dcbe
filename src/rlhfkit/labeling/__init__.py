"""Labelers that produce preference records: automatic ones (gold function, reward model, judge) and people."""
