//! The IPVS generic-netlink family codec: typed attributes, the message, and conversions to
//! and from the model. No I/O here; [`crate::client`] owns the socket.

pub mod attr;
pub mod consts;
pub mod convert;
pub mod message;

pub use attr::{CmdAttr, DaemonAttr, DestAttr, ServiceAttr, StatsAttr};
pub use message::IpvsMessage;

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, ParseableParametrized};
    use netlink_packet_generic::{GenlHeader, GenlMessage};
    use proptest::prelude::*;

    use super::consts::*;
    use super::*;
    use crate::text;

    /// Every op of the fixture table, encoded as a full netlink message.
    fn encoded_ops() -> Vec<Vec<u8>> {
        let t = text::parse(include_str!("../../testdata/ipvsadm-sn.rules")).unwrap().table;
        let mut out = Vec::new();
        for s in t.services.values() {
            let mut attrs = vec![CmdAttr::Service(convert::service_attrs(s))];
            for d in s.dests.values() {
                attrs.push(CmdAttr::Dest(convert::dest_attrs(d)));
            }
            let mut g = GenlMessage::from_payload(IpvsMessage { cmd: IPVS_CMD_NEW_SERVICE, attrs });
            g.set_resolved_family_id(30);
            g.finalize();
            let mut m = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(g));
            m.finalize();
            let mut buf = vec![0; m.buffer_len()];
            m.serialize(&mut buf);
            out.push(buf);
        }
        out
    }

    fn parse(buf: &[u8]) -> Result<NetlinkMessage<GenlMessage<IpvsMessage>>, netlink_packet_core::DecodeError> {
        NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(buf)
    }

    #[test]
    fn encode_decode_round_trip_to_the_model() {
        let t = text::parse(include_str!("../../testdata/ipvsadm-sn.rules")).unwrap().table;
        for (buf, svc) in encoded_ops().iter().zip(t.services.values()) {
            let m = parse(buf).unwrap();
            let NetlinkPayload::InnerMessage(g) = m.payload else { panic!("not a genl message") };
            let mut got = None;
            for a in &g.payload.attrs {
                match a {
                    CmdAttr::Service(v) => got = Some(convert::service_from(v).unwrap().0),
                    CmdAttr::Dest(v) => {
                        let s = got.as_mut().unwrap();
                        let (d, _) = convert::dest_from(v, s.key.family()).unwrap();
                        s.dests.insert(d.key, d);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(got.as_ref(), Some(svc));
        }
    }

    #[test]
    fn service_attributes_have_the_kernel_layout() {
        // NEW_SERVICE for TCP 192.0.2.1:80: AF=2, PROTOCOL=6, ADDR (16 bytes), PORT big-endian 80.
        let s = crate::model::Service::new(
            crate::model::ServiceKey::Addr { protocol: crate::model::Protocol::Tcp, addr: "192.0.2.1:80".parse().unwrap() },
            "rr",
        );
        let attrs = convert::service_attrs(&s);
        let mut buf = vec![0; attrs.as_slice().buffer_len()];
        attrs.as_slice().emit(&mut buf);
        assert_eq!(&buf[..8], &[6, 0, 1, 0, 2, 0, 0, 0], "AF attribute");
        assert_eq!(&buf[8..16], &[6, 0, 2, 0, 6, 0, 0, 0], "PROTOCOL attribute");
        assert_eq!(&buf[16..20], &[20, 0, 3, 0], "ADDR header: 16-byte value");
        assert_eq!(&buf[20..24], &[192, 0, 2, 1]);
        assert_eq!(&buf[36..44], &[6, 0, 4, 0, 0, 80, 0, 0], "PORT in network order");
    }

    use netlink_packet_core::Emitable;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn decoder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
            for cmd in [IPVS_CMD_NEW_SERVICE, IPVS_CMD_GET_INFO, IPVS_CMD_NEW_DAEMON] {
                let _ = IpvsMessage::parse_with_param(&bytes, GenlHeader { cmd, version: 1 });
            }
        }

        #[test]
        fn decoder_never_panics_on_truncated_or_corrupted_messages(
            which in 0usize..9, cut in 0usize..400, flips in proptest::collection::vec((0usize..400, any::<u8>()), 0..4)
        ) {
            let ops = encoded_ops();
            let mut buf = ops[which % ops.len()].clone();
            for (i, b) in flips {
                let n = buf.len();
                buf[i % n] = b;
            }
            let cut = cut.min(buf.len());
            let _ = parse(&buf[..cut]);
            if let Ok(m) = parse(&buf) {
                if let NetlinkPayload::InnerMessage(g) = m.payload {
                    for a in &g.payload.attrs {
                        match a {
                            CmdAttr::Service(v) => { let _ = convert::service_from(v); }
                            CmdAttr::Dest(v) => { let _ = convert::dest_from(v, crate::model::Family::Inet); }
                            CmdAttr::Daemon(v) => { let _ = convert::daemon_from(v); }
                            _ => {}
                        }
                    }
                }
            }
        }
    }
}
