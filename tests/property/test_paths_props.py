"""Stateful property of the path logic: two sessions with real keys over a simulated network
of relay circuits and direct connections. Over any interleaving of sends, deliveries (in any
order: delayed frames), duplicates, drops, time passing, direct connections coming up and
links dying, each side receives exactly the other's messages, once and in order; every
buffer stays within its bound; and once the network behaves, everything sent arrives
(`meshcore.testing.SessionPathsMachine`)."""

from __future__ import annotations

from meshcore.testing.machines import SessionPathsMachine, SessionRelaysMachine

TestPaths = SessionPathsMachine.TestCase

TestRelays = SessionRelaysMachine.TestCase
"""The same over three relays that die, come back and close circuits: a spare on another
relay, moves between relays, probes; still exactly once, in order, with bounded buffers."""
