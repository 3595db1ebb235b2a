//! The API watchers: this node's pods through a reflector, ConfigMap and Secret
//! metadata, and the Events.
