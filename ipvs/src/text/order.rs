//! The order in which `ipvsadm` lists services and real servers.
//!
//! `ipvsadm` sorts with libipvs' `ipvs_cmp_services`/`ipvs_cmp_dests`, which subtract 32-bit
//! address words as unsigned and read the result as a C `int`. That is not a total order: with
//! VIPs in 10/8, 100.64/10 and 192.168/16 it has cycles (10.x < 100.64.x < 192.168.x < 10.x), so
//! the result depends on the input order and on the sort algorithm. A byte-identical listing
//! therefore needs both: the kernel's dump order as input (what `Client::status` returns) and
//! glibc's `qsort` (a top-down merge sort taking the left element when `cmp <= 0`, glibc 2.36 as
//! in Debian bookworm) reproduced exactly. Rust's own sort may panic on such a comparator, which
//! is one more reason not to use it here.

use std::cmp::Ordering;

use crate::model::{DestKey, Family, Protocol, ServiceKey};

/// `ipvs_cmp_services` with its C arithmetic: fwmark, family, protocol, address words, port.
pub fn c_cmp_services(a: &ServiceKey, b: &ServiceKey) -> i32 {
    fn parts(k: &ServiceKey) -> (u32, i32, i32, [u32; 4], u16) {
        match k {
            // ipvsadm stores fwmark services with protocol TCP and a zero address.
            ServiceKey::Fwmark { family, mark } => (*mark, af(*family), 6, [0; 4], 0),
            ServiceKey::Addr { protocol, addr } => {
                let proto = match protocol {
                    Protocol::Tcp => 6,
                    Protocol::Udp => 17,
                    Protocol::Sctp => 132,
                };
                (0, af(Family::of(&addr.ip())), proto, addr_words(&addr.ip()), addr.port())
            }
        }
    }
    let (am, aaf, ap, aw, aport) = parts(a);
    let (bm, baf, bp, bw, bport) = parts(b);
    let v6 = a.family() == Family::Inet6;
    let c = am.wrapping_sub(bm) as i32;
    let c = if c != 0 { c } else { aaf - baf };
    let c = if c != 0 { c } else { ap - bp };
    let c = if c != 0 { c } else { cmp_words(&aw, &bw, v6) };
    if c != 0 {
        c
    } else {
        aport as i32 - bport as i32
    }
}

/// `ipvs_cmp_dests` with its C arithmetic: address words, then port.
pub fn c_cmp_dests(a: &DestKey, b: &DestKey) -> i32 {
    let v6 = matches!(a.addr, std::net::IpAddr::V6(_));
    let c = cmp_words(&addr_words(&a.addr), &addr_words(&b.addr), v6);
    if c != 0 {
        c
    } else {
        a.port as i32 - b.port as i32
    }
}

/// [`c_cmp_services`] as an `Ordering` (for callers that only compare two keys).
pub fn cmp_services(a: &ServiceKey, b: &ServiceKey) -> Ordering {
    c_cmp_services(a, b).cmp(&0)
}

/// [`c_cmp_dests`] as an `Ordering`.
pub fn cmp_dests(a: &DestKey, b: &DestKey) -> Ordering {
    c_cmp_dests(a, b).cmp(&0)
}

/// Sorts `items` exactly as glibc 2.36 `qsort` sorts them with the C comparator `cmp`:
/// `msort_with_tmp`, halves of `n / 2` and `n - n / 2`, merge taking the left side on `<= 0`.
/// Never panics, whatever `cmp` answers.
pub fn glibc_qsort<T>(items: &mut Vec<T>, cmp: impl Fn(&T, &T) -> i32) {
    let mut idx: Vec<usize> = (0..items.len()).collect();
    let mut tmp = Vec::with_capacity(items.len());
    msort(&mut idx, &mut tmp, &|a, b| cmp(&items[a], &items[b]));
    let mut slots: Vec<Option<T>> = items.drain(..).map(Some).collect();
    items.extend(idx.into_iter().map(|i| slots[i].take().expect("a permutation visits each index once")));
}

fn msort(b: &mut [usize], tmp: &mut Vec<usize>, cmp: &impl Fn(usize, usize) -> i32) {
    let n = b.len();
    if n <= 1 {
        return;
    }
    let n1 = n / 2;
    msort(&mut b[..n1], tmp, cmp);
    msort(&mut b[n1..], tmp, cmp);
    tmp.clear();
    let (mut i, mut j) = (0, n1);
    while i < n1 && j < n {
        if cmp(b[i], b[j]) <= 0 {
            tmp.push(b[i]);
            i += 1;
        } else {
            tmp.push(b[j]);
            j += 1;
        }
    }
    // Left leftovers go after the merged part; right leftovers are already in place.
    tmp.extend_from_slice(&b[i..n1]);
    b[..tmp.len()].copy_from_slice(tmp);
}

fn af(f: Family) -> i32 {
    match f {
        Family::Inet => libc::AF_INET,
        Family::Inet6 => libc::AF_INET6,
    }
}

fn addr_words(a: &std::net::IpAddr) -> [u32; 4] {
    match a {
        std::net::IpAddr::V4(v4) => [u32::from(*v4), 0, 0, 0],
        std::net::IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [w(0), w(4), w(8), w(12)]
        }
    }
}

fn cmp_words(a: &[u32; 4], b: &[u32; 4], v6: bool) -> i32 {
    let n = if v6 { 4 } else { 1 };
    (0..n).map(|i| a[i].wrapping_sub(b[i]) as i32).find(|c| *c != 0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(s: &str) -> ServiceKey {
        ServiceKey::Addr { protocol: Protocol::Tcp, addr: s.parse().unwrap() }
    }

    #[test]
    fn compare_wraps_like_c() {
        // 0xC0.. - 0x0A.. overflows to a negative int: 192.x sorts before 10.x in ipvsadm.
        assert_eq!(cmp_services(&tcp("192.0.2.1:80"), &tcp("10.0.0.1:80")), Ordering::Less);
        assert_eq!(cmp_services(&tcp("10.0.0.1:80"), &tcp("192.0.2.1:80")), Ordering::Greater);
    }

    #[test]
    fn merge_sort_matches_glibc_on_a_cyclic_comparator() {
        // a=10.x < b=100.64.x < c=192.168.x < a: the result depends on input order, as in C.
        let (a, b, c) = (tcp("10.0.0.1:80"), tcp("100.64.0.1:80"), tcp("192.168.0.1:80"));
        assert!(c_cmp_services(&a, &b) < 0 && c_cmp_services(&b, &c) < 0 && c_cmp_services(&c, &a) < 0);
        // glibc on [a, b, c]: sort [a] and [b, c] -> [b, c]; merge a vs b: a<=b -> a, then b, c.
        let mut v = vec![a, b, c];
        glibc_qsort(&mut v, c_cmp_services);
        assert_eq!(v, vec![a, b, c]);
        // On [c, b, a]: [c] and [b, a] -> (b vs a: b>a) [a, b]; merge c vs a: c<a -> c, a, b.
        let mut v = vec![c, b, a];
        glibc_qsort(&mut v, c_cmp_services);
        assert_eq!(v, vec![c, a, b]);
    }

    #[test]
    fn merge_sort_is_a_stable_sort_on_sane_input() {
        let mut v: Vec<(u32, u32)> = (0..100u32).map(|i| ((i * 7919) % 13, i)).collect();
        let mut want = v.clone();
        want.sort_by_key(|p| p.0);
        glibc_qsort(&mut v, |x, y| x.0 as i32 - y.0 as i32);
        assert_eq!(v, want);
    }

    #[test]
    fn never_panics_on_a_lying_comparator() {
        let mut v: Vec<u32> = (0..257).collect();
        glibc_qsort(&mut v, |a, b| if (a ^ b) & 1 == 0 { -1 } else { 1 });
        v.sort();
        assert_eq!(v, (0..257).collect::<Vec<_>>());
    }
}
