"""Operator tools over alert packets: inspect, replay to Kafka, generate synthetic alerts."""
