//! The Linux edge of VRRP: raw IP sockets for adverts, gratuitous ARP through AF_PACKET, and
//! the virtual addresses, virtual MACs and link events through rtnetlink. Everything
//! protocol-shaped lives in the sans-IO core; these are thin, testable wrappers around the kernel.

pub mod garp;
pub mod link;
pub mod route;
pub mod socket;
pub mod vip;
pub mod vmac;

/// The interface index for a name, or a clear error.
pub fn ifindex(name: &str) -> std::io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| std::io::Error::other("interface name with NUL"))?;
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("no interface named {name:?}"))),
        i => Ok(i),
    }
}

/// The interface's MAC address, from sysfs.
pub fn mac_of(name: &str) -> std::io::Result<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address"))?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(std::io::Error::other(format!("{name}: unexpected MAC {text:?}")));
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| std::io::Error::other(format!("{name}: bad MAC {text:?}")))?;
    }
    Ok(mac)
}
