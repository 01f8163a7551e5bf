//! NATS JetStream transport (configuration revisions and events).
