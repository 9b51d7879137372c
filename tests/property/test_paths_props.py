"""Stateful property of the path logic: two sessions with real keys over a simulated network
of relay circuits and direct connections. Over any interleaving of sends, deliveries (in any
order: delayed frames), duplicates, drops, time passing, direct connections coming up and
links dying, each side receives exactly the other's messages, once and in order; every
buffer stays within its bound; and once the network behaves, everything sent arrives
(`meshcore.testing.SessionPathsMachine`)."""

from __future__ import annotations

from meshcore.testing.machines import SessionPathsMachine

TestPaths = SessionPathsMachine.TestCase
