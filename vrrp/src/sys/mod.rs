//! Linux I/O for VRRP (filled in by the I/O work).
