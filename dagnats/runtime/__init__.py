"""The runtime on NATS JetStream: embedded server, resources, event log, engine, timers."""
