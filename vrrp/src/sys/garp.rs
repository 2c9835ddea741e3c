//! Gratuitous ARP: tells the LAN's switches and neighbours that a VIP now lives at our MAC.
//! Sent as an ARP request for the VIP from the VIP (keepalived's form), through AF_PACKET.

use std::io;
use std::net::Ipv4Addr;

/// The 42-byte Ethernet frame of a gratuitous ARP request.
pub fn frame(mac: [u8; 6], vip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]); // to everyone
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes()); // ARP
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&vip.octets());
    f[32..38].copy_from_slice(&[0xff; 6]);
    f[38..42].copy_from_slice(&vip.octets());
    f
}

/// An AF_PACKET socket bound to one interface for sending ARP frames.
pub struct ArpSender {
    fd: libc::c_int,
    ifindex: u32,
}

impl ArpSender {
    pub fn open(ifindex: u32) -> io::Result<ArpSender> {
        let proto = (libc::ETH_P_ARP as u16).to_be() as libc::c_int;
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ArpSender { fd, ifindex })
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
        sll.sll_ifindex = self.ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        let r = unsafe {
            libc::sendto(
                self.fd,
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for ArpSender {
    fn drop(&mut self) {
        unsafe { libc::close(self.fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_arp_frame_is_exact() {
        let f = frame([0x02, 0, 0, 0, 0, 1], Ipv4Addr::new(192, 0, 2, 100));
        let expect: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x08, 0x06, // Ethernet
            0, 1, 0x08, 0, 6, 4, 0, 1, // ARP request, Ethernet/IPv4
            0x02, 0, 0, 0, 0, 1, 192, 0, 2, 100, // sender: our MAC, the VIP
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 192, 0, 2, 100, // target: the VIP
        ];
        assert_eq!(f, expect);
    }
}
