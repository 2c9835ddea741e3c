//! VRRP wire format (filled in by the core work).
