"""The agent door: signed requests, enrolment and key rotation, heartbeats, lease delivery and
what agents report about their leases."""
