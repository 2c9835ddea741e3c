//! lab helpers
