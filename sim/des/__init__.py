"""Discrete-event simulation in virtual time, driving the real dialer core."""
