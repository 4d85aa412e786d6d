"""Tests of the job queues (`miniagent.queue`)."""
