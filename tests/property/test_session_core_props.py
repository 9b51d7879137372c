"""Stateful property: over any interleaving of sends, losses, duplicates, reordering, path
switches and timers, each side receives exactly the other's messages, once, in order, and
every buffer stays within its bound (`meshcore.testing.SessionCoreMachine`)."""

from __future__ import annotations

from meshcore.testing.machines import SessionCoreMachine

TestLossyLink = SessionCoreMachine.TestCase
