//! The `ipvsadm -S` / `-Sn` rule format, the lingua franca of LVS operators.
//!
//! [`parse`] reads what `ipvsadm -R` reads, all or nothing: any bad line is an error with its
//! line number, so a restore never half-applies a file. [`save`] prints a table exactly as
//! `ipvsadm -Sn` (ipvsadm 1.31) does, so the two tools' outputs can be diffed byte for byte:
//! same order (see [`order`]), same option spelling, and like ipvsadm no `-x`/`-y` thresholds
//! unless asked for ([`SaveOptions::thresholds`]).
//!
//! # Layout
//! - [`parse`](mod@parse): the reader, with ipvsadm's option rules.
//! - [`save`](mod@save): the `-Sn` printer.
//! - [`order`]: ipvsadm's listing order (its C comparators and glibc's merge sort).

pub mod order;
#[allow(clippy::module_inception)]
mod parse;
mod save;

pub use order::{cmp_dests, cmp_services};
pub use parse::{parse, parse_service_key, sched_flags, ParseError, RuleFile};
pub use save::{save, save_ordered, sched_flag_names, service_arg, SaveOptions};

#[cfg(test)]
pub(crate) mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::model::*;

    /// `ipvsadm -Sn` output of ipvsadm 1.31 for a table with every kind of service, real
    /// server and tunnel (`testdata/ipvsadm-sn.rules`; the VM tests check it against the real
    /// tool): `save(parse(x)) == x` must hold byte for byte.
    pub(crate) const IPVSADM_SN: &str = include_str!("../../testdata/ipvsadm-sn.rules");

    fn one_dest(text: &str) -> Dest {
        let t = parse(text).unwrap().table;
        *t.services.values().next().unwrap().dests.values().next().unwrap()
    }

    #[test]
    fn save_of_parse_is_byte_identical_to_ipvsadm() {
        let f = parse(IPVSADM_SN).unwrap();
        assert!(!f.clear);
        assert_eq!(f.table.services.len(), 9);
        assert_eq!(save(&f.table), IPVSADM_SN);
    }

    #[test]
    fn save_prints_each_setting_in_ipvsadm_spelling() {
        let t = parse(
            "-A -t 192.0.2.2:443 -s rr -p 300 -M 255.255.255.0\n\
             -A -u 192.0.2.1:53 -s mh -b mh-port,mh-fallback -o\n\
             -A -f 8 -6 -s rr -p 100 -M 64\n\
             -A -u 192.0.2.4:5060 -p 30 --pe sip -s rr\n\
             -a -u 192.0.2.4:5060 -r 198.51.100.5 -i --tun-type gue --tun-port 6080 -w 2\n\
             -a -u 192.0.2.4:5060 -r 198.51.100.6 -i --tun-type gre --tun-csum -w 0\n",
        )
        .unwrap()
        .table;
        assert_eq!(
            save(&t),
            "-A -t 192.0.2.2:443 -s rr -p 300 -M 255.255.255.0\n\
             -A -u 192.0.2.1:53 -s mh -o -b mh-fallback,mh-port\n\
             -A -u 192.0.2.4:5060 -s rr -p 30 --pe sip\n\
             -a -u 192.0.2.4:5060 -r 198.51.100.5:5060 -i -w 2 --tun-type gue --tun-port 6080 --tun-nocsum\n\
             -a -u 192.0.2.4:5060 -r 198.51.100.6:5060 -i -w 0 --tun-type gre --tun-csum\n\
             -A -f 8 -6 -s rr -p 100 -M 64\n"
        );
    }

    #[test]
    fn thresholds_are_dropped_like_ipvsadm_unless_asked_for() {
        let t = parse("-A -t 192.0.2.9:80\n-a -t 192.0.2.9:80 -r 198.51.100.9 -m -x 10 -y 2\n").unwrap().table;
        assert_eq!(save(&t), "-A -t 192.0.2.9:80 -s wlc\n-a -t 192.0.2.9:80 -r 198.51.100.9:80 -m -w 1\n");
        assert_eq!(
            save_ordered(t.services.values(), SaveOptions { thresholds: true }),
            "-A -t 192.0.2.9:80 -s wlc\n-a -t 192.0.2.9:80 -r 198.51.100.9:80 -m -w 1 -x 10 -y 2\n"
        );
    }

    #[test]
    fn order_follows_ipvsadm_not_insertion() {
        let shuffled: String = IPVSADM_SN.lines().filter(|l| l.starts_with("-A")).rev().map(|l| format!("{l}\n")).collect();
        let t = parse(&shuffled).unwrap().table;
        let expect: String = IPVSADM_SN.lines().filter(|l| l.starts_with("-A")).map(|l| format!("{l}\n")).collect();
        assert_eq!(save(&t), expect);
    }

    #[test]
    fn save_follows_the_kernel_order_through_glibc_sort() {
        // ipvsadm's comparator has a cycle on 10/8, 100.64/10, 192.168/16: the kernel's order decides.
        let t = parse("-A -t 10.0.0.1:80\n-A -t 100.64.0.1:80\n-A -t 192.168.0.1:80\n").unwrap().table;
        let by = |ips: [&str; 3]| -> Vec<&Service> {
            ips.iter().map(|ip| t.services.values().find(|s| s.key.to_string().contains(ip)).unwrap()).collect()
        };
        let a = save_ordered(by(["192.168", "100.64", "10.0"]), SaveOptions::default());
        assert_eq!(a, "-A -t 192.168.0.1:80 -s wlc\n-A -t 10.0.0.1:80 -s wlc\n-A -t 100.64.0.1:80 -s wlc\n");
        let b = save_ordered(by(["10.0", "100.64", "192.168"]), SaveOptions::default());
        assert_eq!(b, "-A -t 10.0.0.1:80 -s wlc\n-A -t 100.64.0.1:80 -s wlc\n-A -t 192.168.0.1:80 -s wlc\n");
    }

    #[test]
    fn long_options_and_defaults() {
        let t = parse(
            "--add-service --tcp-service 192.0.2.9:80 --persistent\n\
             --add-server --tcp-service=192.0.2.9:80 --real-server 198.51.100.9 --masquerading --u-threshold 10\n",
        )
        .unwrap()
        .table;
        let s = t.services.values().next().unwrap();
        assert_eq!(s.scheduler, "wlc");
        assert_eq!(s.persistence, Some(Persistence { timeout: 360, netmask: 0xffff_ffff }), "ipvsadm's default is 6 minutes");
        let d = s.dests.values().next().unwrap();
        assert_eq!(d.key.port, 80, "the real server port defaults to the service port");
        assert_eq!((d.weight, d.upper_threshold, d.forward), (1, 10, Forward::Masq));
        assert_eq!(save(&t), "-A -t 192.0.2.9:80 -s wlc -p 360\n-a -t 192.0.2.9:80 -r 198.51.100.9:80 -m -w 1\n");
    }

    #[test]
    fn direct_routing_and_tunnels_keep_the_service_port() {
        // ipvsadm overwrites the port of -g/-i real servers of address services.
        let svc = "-A -t 192.0.2.1:80\n";
        assert_eq!(one_dest(&format!("{svc}-a -t 192.0.2.1:80 -r 198.51.100.1:8080 -g\n")).key.port, 80);
        assert_eq!(one_dest(&format!("{svc}-a -t 192.0.2.1:80 -r 198.51.100.1:8080 -i\n")).key.port, 80);
        assert_eq!(one_dest(&format!("{svc}-a -t 192.0.2.1:80 -r 198.51.100.1:8080 -m\n")).key.port, 8080);
        assert_eq!(one_dest("-A -f 7\n-a -f 7 -r 198.51.100.1:8080\n").key.port, 8080);
        assert_eq!(one_dest("-A -f 7\n-a -f 7 -r 198.51.100.1\n").key.port, 0);
    }

    #[test]
    fn comments_names_and_the_ipvsadm_word() {
        let f = parse(
            "# saved by hand\n\
             ipvsadm -A -t 127.0.0.1:http -s rr   # trailing comment\n\
             \n\
             -a -t localhost:www -r [2001:db8::1]:80 -i\r\n",
        )
        .unwrap();
        let s = f.table.services.values().next().unwrap();
        assert_eq!(s.key.to_string(), "TCP 127.0.0.1:80");
        let d = s.dests.values().next().unwrap();
        assert_eq!(d.key.addr, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(d.forward, Forward::Tunnel(Tunnel::Ipip));
    }

    #[test]
    fn zero_port_needs_persistence() {
        let f = parse("-A -t 192.0.2.1 -p\n-a -t 192.0.2.1:0 -r 198.51.100.1\n").unwrap();
        let s = f.table.services.values().next().unwrap();
        assert_eq!(s.key.to_string(), "TCP 192.0.2.1:0");
        assert_eq!(save(&f.table), "-A -t 192.0.2.1:0 -s wlc -p 360\n-a -t 192.0.2.1:0 -r 198.51.100.1:0 -g -w 1\n");
    }

    #[test]
    fn clear_line_is_reported() {
        let f = parse("-A -t 192.0.2.7:80\n-C\n-A -t 192.0.2.1:80 -s rr\n").unwrap();
        assert!(f.clear);
        assert_eq!(f.table.services.len(), 1, "-C clears what came before it");
    }

    #[test]
    fn service_keys_for_commands() {
        assert_eq!(parse_service_key(&["-t", "192.0.2.1:80"]).unwrap().to_string(), "TCP 192.0.2.1:80");
        assert_eq!(parse_service_key(&["-f", "7", "-6"]).unwrap().to_string(), "FWM 7 IPv6");
        assert_eq!(parse_service_key(&["--sctp-service", "[2001:db8::1]:3868"]).unwrap().to_string(), "SCTP [2001:db8::1]:3868");
        assert!(parse_service_key(&["-t", "192.0.2.1:80", "-s", "rr"]).is_err());
        assert!(parse_service_key(&[]).is_err());
    }

    #[test]
    fn errors_name_the_line() {
        let svc = "-A -t 192.0.2.1:80\n";
        let cases: Vec<(String, usize, &str)> = vec![
            (format!("{svc}-a -t 192.0.2.1:80 -r 198.51.100.1:80 -q\n"), 2, "unknown"),
            ("-A -t 192.0.2.1 -s rr\n".into(), 1, "zero port"),
            ("\n# c\n-a -t 192.0.2.1:80 -r 198.51.100.1\n".into(), 3, "not defined"),
            (format!("{svc}{svc}"), 2, "twice"),
            ("-A -t no-such-host.invalid:80\n".into(), 1, "does not resolve"),
            ("-A -t 192.0.2.1:80 -p 0\n".into(), 1, "persistence timeout"),
            ("-A -t 192.0.2.1:80 -p 2678401\n".into(), 1, "persistence timeout"),
            ("-A -t 192.0.2.1:80 -M 255.0.0.0\n".into(), 1, "-M needs -p"),
            ("-A -f 8 -6 -p -M 0\n".into(), 1, "IPv6 netmask"),
            (format!("{svc}-a -t 192.0.2.1:80 -r 198.51.100.1 -w 70000\n"), 2, "weight"),
            (format!("{svc}-a -t 192.0.2.1:80 -r 198.51.100.1 -x 2147483648\n"), 2, "upper threshold"),
            (format!("{svc}-a -t 192.0.2.1:80 -r 2001:db8::1 -m\n"), 2, "address family"),
            (format!("{svc}-a -t 192.0.2.1:80 -r 198.51.100.1 -w 1 -w 2\n"), 2, "multiple -w"),
            (format!("{svc}-a -t 192.0.2.1:80 -r 198.51.100.1 -g -m\n"), 2, "multiple forwarding"),
            ("-A -t 192.0.2.1:80 -s\n".into(), 1, "needs a value"),
            ("-E -t 192.0.2.1:80\n".into(), 1, "not supported"),
            ("-A -t 192.0.2.1:80 rr\n".into(), 1, "unexpected argument"),
            ("-A -f 0\n".into(), 1, "fwmark"),
            ("-A -6 -f 7\n".into(), 1, "-6 used before -f"),
            ("-A -t 192.0.2.1:80 -o\n".into(), 1, "only for UDP"),
            ("-A -t 192.0.2.1:80 -s rr -b sh-port\n".into(), 1, "needs scheduler \"sh\""),
            ("-A -t 192.0.2.1:80 -b bogus\n".into(), 1, "invalid scheduler flag"),
            ("-A -t 192.0.2.1:80 --pe sip\n".into(), 1, "--pe needs -p"),
            ("-A -t 192.0.2.1:80 -r 198.51.100.1\n".into(), 1, "belongs on -a"),
            (format!("{svc}-a -t 192.0.2.1:80 -r 198.51.100.1 -s rr\n"), 2, "belongs on -A"),
            (format!("{svc}-a -t 192.0.2.1:80 -r 198.51.100.1 -i --tun-type gue\n"), 2, "--tun-port"),
            (format!("{svc}-a -t 192.0.2.1:80 -r 198.51.100.1 -i --tun-type gre --tun-port 1\n"), 2, "--tun-port option with the gre"),
            (format!("{svc}-a -t 192.0.2.1:80 -r 198.51.100.1 -i --tun-type gue --tun-port 1 --tun-csum --tun-remcsum\n"), 2, "conflicts"),
            (format!("{svc}-a -t 192.0.2.1:80 -r 198.51.100.1 -i --tun-csum\n"), 2, "ipip"),
            (format!("{svc}-a -t 192.0.2.1:80 -r 198.51.100.1 -m --tun-type gre\n"), 2, "need -i"),
            (format!("{svc}-a -t 192.0.2.1:80 -r [2001:db8::1] -i\n"), 2, ":PORT"),
            ("-A -t 80\n".into(), 1, "not an address"),
            ("-C -t 192.0.2.1:80\n".into(), 1, "-C takes no options"),
            ("-A -a -t 192.0.2.1:80\n".into(), 1, "one command"),
        ];
        for (text, line, what) in cases {
            let e = parse(&text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(what), "{text:?}: {e}");
        }
    }

    /// What the rule format cannot say, removed from a random table: ipvsadm's own rules.
    fn expressible(mut t: Table) -> Table {
        for s in t.services.values_mut() {
            if !matches!(s.key, ServiceKey::Fwmark { .. } | ServiceKey::Addr { protocol: Protocol::Udp, .. }) {
                s.one_packet = false;
            }
            let fam = s.key.family();
            for d in s.dests.values_mut() {
                if Family::of(&d.key.addr) != fam && !matches!(d.forward, Forward::Tunnel(_)) {
                    d.forward = Forward::Tunnel(Tunnel::Ipip);
                }
                match &mut d.forward {
                    Forward::Tunnel(Tunnel::Gue { flags, .. }) if flags.csum && flags.remcsum => flags.remcsum = false,
                    Forward::Tunnel(Tunnel::Gre { flags }) if flags.remcsum => flags.remcsum = false,
                    _ => {}
                }
                if let Forward::Tunnel(Tunnel::Gue { flags, .. } | Tunnel::Gre { flags }) = &mut d.forward {
                    flags.nocsum = !(flags.csum || flags.remcsum);
                }
            }
        }
        t
    }

    proptest::proptest! {
        #[test]
        fn parse_reads_back_what_save_prints(t in crate::diff::tests::arb_table()) {
            let t = expressible(t);
            let text = save_ordered(t.services.values(), SaveOptions { thresholds: true });
            let back = parse(&text).map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e}\n{text}")))?;
            proptest::prop_assert_eq!(back.table, t);
        }
    }

    #[test]
    fn bad_input_never_panics() {
        let words = ["-A", "-a", "-C", "-t", "-u", "-f", "-6", "-p", "-M", "-r", "-i", "--tun-type", "gue", "[", "]", "::", "1", "-b", ",", "=", "--pe=", "#"];
        let mut seed = 0x2545_f491_u64;
        for _ in 0..5000 {
            let mut line = String::new();
            for _ in 0..(seed % 9) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                line.push_str(words[(seed % words.len() as u64) as usize]);
                line.push(' ');
            }
            let _ = parse(&line);
        }
    }
}
