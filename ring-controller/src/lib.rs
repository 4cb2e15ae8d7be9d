//! Placeholder crate: built out by its own issue (see ARCHITECTURE.md).
