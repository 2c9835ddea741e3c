//! filled in by the text-format work
