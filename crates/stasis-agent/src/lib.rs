//! The agent (see docs/architecture.md).
