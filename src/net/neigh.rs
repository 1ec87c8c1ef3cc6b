//! The IPv4 neighbour table, as /proc/net/arp shows it: which address a
//! link-layer (MAC) address was last seen with.

use std::net::Ipv4Addr;

/// `ATF_COM` (linux/if_arp.h): the entry's hardware address is known
/// (the kernel sets it for every valid state: reachable, stale, delay,
/// probe, permanent).
const ATF_COM: u32 = 0x02;

/// The six bytes of a MAC written as six hexadecimal octets of one or two
/// digits separated by ':', in either case.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut bytes = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut bytes {
        let part = parts.next()?;
        // from_str_radix alone would take a sign.
        if part.is_empty() || part.len() > 2 || !part.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(bytes)
}

/// The address of the first complete entry of `table` (the text of
/// /proc/net/arp) whose hardware address is `mac`.
pub fn ip_in_table(table: &str, mac: [u8; 6]) -> Option<Ipv4Addr> {
    // IP address, HW type, Flags, HW address, Mask, Device; a header line
    // first, which does not parse.
    table.lines().find_map(|line| {
        let mut fields = line.split_ascii_whitespace();
        let ip = fields.next()?.parse::<Ipv4Addr>().ok()?;
        let _hw_type = fields.next()?;
        let flags = fields.next()?;
        let flags = u32::from_str_radix(flags.strip_prefix("0x").unwrap_or(flags), 16).ok()?;
        let hw = parse_mac(fields.next()?)?;
        (flags & ATF_COM != 0 && hw == mac).then_some(ip)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
IP address       HW type     Flags       HW address            Mask     Device
192.0.2.1        0x1         0x2         02:fc:00:00:00:05     *        eth0
10.203.0.9       0x1         0x0         aa:bb:cc:dd:ee:01     *        mt2.r
10.203.0.6       0x1         0x2         aa:bb:cc:dd:ee:01     *        mt1.r
10.203.0.14      0x1         0x6         aa:bb:cc:dd:ee:02     *        mt3.r
";

    #[test]
    fn macs_parse_in_either_case_and_short_octets() {
        let want = Some([0xaa, 0xbb, 0x0c, 0xdd, 0xee, 0x01]);
        assert_eq!(parse_mac("AA:bb:c:dd:EE:01"), want);
        assert_eq!(parse_mac("aa:bb:0c:dd:ee:01"), want);
    }

    #[test]
    fn malformed_macs_are_none() {
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa-bb-cc-dd-ee-ff",
            "aa:bb:cc:dd:ee:",
            "aaa:bb:cc:dd:ee:ff",
            "gg:bb:cc:dd:ee:ff",
            "+a:bb:cc:dd:ee:ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_complete_entries_count() {
        let mac = parse_mac("AA:BB:CC:DD:EE:01").expect("a MAC");
        // The incomplete entry (flags 0) before it is passed over.
        assert_eq!(ip_in_table(TABLE, mac), Some(Ipv4Addr::new(10, 203, 0, 6)));
        let permanent = parse_mac("aa:bb:cc:dd:ee:02").expect("a MAC");
        assert_eq!(
            ip_in_table(TABLE, permanent),
            Some(Ipv4Addr::new(10, 203, 0, 14))
        );
        let absent = parse_mac("aa:bb:cc:dd:ee:03").expect("a MAC");
        assert_eq!(ip_in_table(TABLE, absent), None);
    }

    #[test]
    fn garbage_tables_give_nothing() {
        let mac = parse_mac("aa:bb:cc:dd:ee:01").expect("a MAC");
        for table in [
            "",
            "\n\n",
            "10.0.0.1",
            "10.0.0.1 0x1 zz aa:bb:cc:dd:ee:01",
            "x y z w",
        ] {
            assert_eq!(ip_in_table(table, mac), None, "{table:?}");
        }
    }
}
