"""Kafka plumbing shared by reading and publishing: client settings, security, ACLs, errors."""
