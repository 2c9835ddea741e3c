//! Gratuitous ARP (IPv4) and unsolicited neighbour advertisements (IPv6): they tell the LAN's
//! switches and neighbours that a VIP now lives at our MAC. Sent through AF_PACKET, the ARP as a
//! request for the VIP from the VIP (keepalived's form), the NA to all-nodes with Override set.

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

/// The 86-byte Ethernet frame of an unsolicited neighbour advertisement for `vip`
/// (RFC 4861 §7.2.6: to ff02::1, hop limit 255, Override flag, target link-layer option).
pub fn na_frame(mac: [u8; 6], vip: std::net::Ipv6Addr) -> [u8; 86] {
    let mut f = [0u8; 86];
    let all_nodes = std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    f[0..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    // IPv6 header
    f[14] = 0x60;
    f[18..20].copy_from_slice(&32u16.to_be_bytes()); // payload length
    f[20] = 58; // ICMPv6
    f[21] = 255; // hop limit
    f[22..38].copy_from_slice(&vip.octets());
    f[38..54].copy_from_slice(&all_nodes.octets());
    // ICMPv6 neighbour advertisement
    f[54] = 136;
    f[58] = 0x20; // Override
    f[62..78].copy_from_slice(&vip.octets());
    f[78] = 2; // target link-layer address option
    f[79] = 1; // 8 bytes
    f[80..86].copy_from_slice(&mac);
    // ICMPv6 checksum over the IPv6 pseudo-header and the message.
    let mut acc = crate::wire::sum16(&vip.octets(), 0);
    acc = crate::wire::sum16(&all_nodes.octets(), acc);
    acc = crate::wire::sum16(&32u32.to_be_bytes(), acc);
    acc = crate::wire::sum16(&[0, 0, 0, 58], acc);
    acc = crate::wire::sum16(&f[54..86], acc);
    f[56..58].copy_from_slice(&crate::wire::fold(acc).to_be_bytes());
    f
}

/// An AF_PACKET socket bound to one interface for sending ARP and NA frames.
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
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        sll.sll_protocol = ethertype.to_be();
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

    #[test]
    fn unsolicited_na_frame_checksums() {
        let vip: std::net::Ipv6Addr = "2001:db8::100".parse().unwrap();
        let f = na_frame([0x02, 0, 0, 0, 0, 1], vip);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!((f[20], f[21], f[54], f[58]), (58, 255, 136, 0x20));
        // The ICMPv6 checksum verifies: the sum over pseudo-header and message folds to 0xffff.
        let mut acc: u32 = 0;
        for b in [&vip.octets()[..], &f[38..54], &32u32.to_be_bytes(), &[0, 0, 0, 58], &f[54..86]] {
            for c in b.chunks(2) {
                acc += u16::from_be_bytes([c[0], c[1]]) as u32;
            }
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        assert_eq!(acc, 0xffff);
    }
}
