//! Client address parsing and CIDR tables (geo by address). Decides which region a client
//! address belongs to; must never fail on a malformed address: it is simply unknown.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address range, IPv4 ranges held as IPv4-mapped IPv6 so one table serves both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: u128,
    /// Prefix length in the 128-bit space.
    len: u8,
}

/// Why a CIDR string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("expected ADDRESS/PREFIX")]
    Shape,
    #[error("bad address")]
    Address,
    #[error("bad prefix length")]
    Prefix,
    #[error("host bits set after the prefix (did you mean the network address?)")]
    HostBits,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn prefix_mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s.split_once('/').ok_or(CidrError::Shape)?;
        let ip: IpAddr = addr.trim().parse().map_err(|_| CidrError::Address)?;
        let len: u8 = len.trim().parse().map_err(|_| CidrError::Prefix)?;
        let (max, offset) = match ip {
            IpAddr::V4(_) => (32, 96),
            IpAddr::V6(_) => (128, 0),
        };
        if len > max {
            return Err(CidrError::Prefix);
        }
        let len = len + offset;
        let net = to_u128(ip);
        if net & !prefix_mask(len) != 0 {
            return Err(CidrError::HostBits);
        }
        Ok(Cidr { net, len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = Ipv6Addr::from(self.net);
        match v6.to_ipv4_mapped() {
            Some(v4) if self.len >= 96 => write!(f, "{v4}/{}", self.len - 96),
            _ => write!(f, "{v6}/{}", self.len),
        }
    }
}

impl Cidr {
    /// Whether the address is inside the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        (to_u128(ip) & prefix_mask(self.len)) == self.net
    }
}

/// Longest-prefix-match table.
#[derive(Debug, Clone)]
pub struct CidrTable<T> {
    /// Sorted by descending prefix length, so the first hit is the longest match.
    entries: Vec<(Cidr, T)>,
}

impl<T: Copy> CidrTable<T> {
    pub fn new(mut entries: Vec<(Cidr, T)>) -> Self {
        entries.sort_by_key(|e| std::cmp::Reverse(e.0.len));
        Self { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of the longest matching range.
    pub fn lookup(&self, ip: IpAddr) -> Option<T> {
        let x = to_u128(ip);
        self.entries
            .iter()
            .find(|(c, _)| (x & prefix_mask(c.len)) == c.net)
            .map(|(_, v)| *v)
    }
}

/// Parse Envoy's `source.address` (`1.2.3.4:5678`, `[::1]:5678`, or a bare address).
pub fn parse_socket_address(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        return rest[..end].parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    let (host, _port) = s.rsplit_once(':')?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert_eq!(c.to_string(), "10.0.0.0/8");
        let c6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(c6.contains("2001:db8::1".parse().unwrap()));
        assert!(!c6.contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn rejects_bad_cidrs() {
        assert_eq!("10.0.0.0".parse::<Cidr>(), Err(CidrError::Shape));
        assert_eq!("10.0.0.300/8".parse::<Cidr>(), Err(CidrError::Address));
        assert_eq!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::Prefix));
        assert_eq!("10.0.0.1/8".parse::<Cidr>(), Err(CidrError::HostBits));
        assert_eq!("::/129".parse::<Cidr>(), Err(CidrError::Prefix));
    }

    #[test]
    fn longest_prefix_wins() {
        let t = CidrTable::new(vec![
            ("10.0.0.0/8".parse().unwrap(), 1u16),
            ("10.1.0.0/16".parse().unwrap(), 2u16),
            ("0.0.0.0/0".parse().unwrap(), 3u16),
        ]);
        assert_eq!(t.lookup("10.1.9.9".parse().unwrap()), Some(2));
        assert_eq!(t.lookup("10.2.9.9".parse().unwrap()), Some(1));
        assert_eq!(t.lookup("192.168.1.1".parse().unwrap()), Some(3));
        // 0.0.0.0/0 is IPv4-only: an IPv6 client does not match it.
        assert_eq!(t.lookup("2001:db8::1".parse().unwrap()), None);
    }

    #[test]
    fn socket_addresses() {
        assert_eq!(
            parse_socket_address("1.2.3.4:80"),
            Some("1.2.3.4".parse().unwrap())
        );
        assert_eq!(
            parse_socket_address("[::1]:443"),
            Some("::1".parse().unwrap())
        );
        assert_eq!(parse_socket_address("::1"), Some("::1".parse().unwrap()));
        assert_eq!(
            parse_socket_address("1.2.3.4"),
            Some("1.2.3.4".parse().unwrap())
        );
        assert_eq!(parse_socket_address("garbage"), None);
        assert_eq!(parse_socket_address("[::1"), None);
        assert_eq!(parse_socket_address(""), None);
    }
}
