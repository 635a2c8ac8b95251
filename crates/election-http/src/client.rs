//! Which client sent a request, when the service sits behind proxies.
//!
//! Why: a service that limits something per client address (ingest's
//! failed authentications, `failed_auth` there) sees its load balancer's
//! address on every connection when one sits in front of it, so every
//! client shares one allowance: a single client posting made-up tokens
//! through the balancer would get every new ballot box's first request
//! refused. Proxies say whom they forwarded for in `X-Forwarded-For`, but
//! any client can send that header too, so it is believed only as far as
//! the operator says: [`TrustedProxies`] lists the proxies' networks, and
//! [`TrustedProxies::client`] walks the header from the right (the entry the
//! nearest proxy appended) past every trusted address, as nginx's
//! `real_ip_recursive on` and HAProxy do. The first address that is not a
//! trusted proxy is the client; whatever is left of it, written by the
//! client itself, is never read. With no trusted proxies (the default) the
//! header is ignored and the TCP peer is the client.
//!
//! Only `X-Forwarded-For`: the header every common balancer and CDN writes
//! (nginx, HAProxy, Envoy, the clouds' balancers). RFC 7239's `Forwarded`
//! is not read; a proxy that writes only that one is not trusted here.
//! Not `axum-client-ip`: it reads a fixed position of the header
//! (`RightmostXForwardedFor`, the entry the nearest proxy wrote), which is
//! right behind exactly one proxy, wrong behind a chain of them, and
//! believed from any peer, proxy or not.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The networks of the proxies whose `X-Forwarded-For` is believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// None: the TCP peer is always the client.
    pub fn none() -> TrustedProxies {
        TrustedProxies(Vec::new())
    }

    /// Reads a list of networks (`10.0.0.0/8`, `2001:db8::/32`) or single
    /// addresses (`192.0.2.7`), separated by commas or spaces; empty: none.
    ///
    /// # Errors
    /// Names the first entry that is neither.
    pub fn parse(text: &str) -> Result<TrustedProxies, String> {
        let mut networks = Vec::new();
        for entry in text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|entry| !entry.is_empty())
        {
            let network = match entry.parse::<IpNet>() {
                Ok(network) => network.trunc(),
                Err(_) => entry.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                    format!(
                        "{entry:?} is not an IP network or address \
                         (write e.g. 10.0.0.0/8, 2001:db8::/32 or 192.0.2.7)"
                    )
                })?,
            };
            networks.push(network);
        }
        Ok(TrustedProxies(networks))
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `address` is one of the trusted proxies. An IPv4 address
    /// written as IPv6 (`::ffff:10.0.0.1`, a dual-stack listener's peers)
    /// is the IPv4 address.
    pub fn trusts(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.0.iter().any(|network| network.contains(&address))
    }

    /// The client of a request that came from `peer` with `headers`: `peer`
    /// itself unless it is a trusted proxy; then the rightmost address of
    /// `X-Forwarded-For` (all its lines, in order) that is not a trusted
    /// proxy, or the leftmost one when every entry is. An entry that is not
    /// an address (`unknown`, garbage) ends the walk at the proxy that
    /// passed it on: nothing left of it can be believed.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        // From the right, lazily: what a client wrote at the left of a long
        // header is never even split. A line that is not text ends the walk
        // like any other garbage: skipping it would skip the entry a proxy
        // appended to it and believe what the client wrote before.
        let mut client = peer;
        for line in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(line) = line.to_str() else {
                return client;
            };
            for entry in line.rsplit(',').map(str::trim) {
                if entry.is_empty() {
                    continue;
                }
                let Some(address) = address(entry) else {
                    return client;
                };
                client = address;
                if !self.trusts(address) {
                    return address;
                }
            }
        }
        client
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, network) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{network}")?;
        }
        Ok(())
    }
}

/// An entry of `X-Forwarded-For`: an address, or an address with a port
/// (`192.0.2.7:4711`, `[2001:db8::1]:4711`), which some balancers write.
fn address(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|socket| socket.ip()))
        .ok()
        .map(|address| address.to_canonical())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn forwarded(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append("x-forwarded-for", HeaderValue::from_str(line).unwrap());
        }
        headers
    }

    #[test]
    fn lists_parse_and_bad_entries_are_named() {
        let trusted = TrustedProxies::parse(" 10.0.0.0/8, 192.0.2.7 2001:db8::/32,").unwrap();
        assert_eq!(trusted.to_string(), "10.0.0.0/8,192.0.2.7/32,2001:db8::/32");
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        assert_eq!(TrustedProxies::parse("").unwrap().to_string(), "none");
        // Host bits are dropped: 10.1.2.3/8 is 10.0.0.0/8.
        assert!(
            TrustedProxies::parse("10.1.2.3/8")
                .unwrap()
                .trusts(ip("10.200.0.1"))
        );
        let error = TrustedProxies::parse("10.0.0.0/8,balancer").unwrap_err();
        assert!(error.contains("\"balancer\""), "{error}");
        let error = TrustedProxies::parse("10.0.0.0/33").unwrap_err();
        assert!(error.contains("10.0.0.0/33"), "{error}");
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let none = TrustedProxies::none();
        let headers = forwarded(&["203.0.113.9"]);
        assert_eq!(none.client(ip("10.0.0.1"), &headers), ip("10.0.0.1"));
    }

    #[test]
    fn a_client_that_is_not_a_proxy_cannot_name_another() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let headers = forwarded(&["203.0.113.9"]);
        assert_eq!(
            trusted.client(ip("198.51.100.4"), &headers),
            ip("198.51.100.4")
        );
    }

    #[test]
    fn the_walk_stops_at_the_first_address_that_is_not_a_proxy() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        // The client claimed 1.1.1.1; the outer proxy (10.0.0.2) appended
        // the client's real address, the inner one appended 10.0.0.2.
        let headers = forwarded(&["1.1.1.1, 203.0.113.9", "10.0.0.2"]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &headers), ip("203.0.113.9"));
        // No header behind a trusted proxy: the proxy.
        assert_eq!(
            trusted.client(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
        // Every entry a proxy: the leftmost.
        let headers = forwarded(&["10.0.0.3, 10.0.0.2"]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &headers), ip("10.0.0.3"));
    }

    #[test]
    fn garbage_ends_the_walk_at_the_proxy_that_passed_it_on() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let headers = forwarded(&["203.0.113.9, unknown, 10.0.0.2"]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &headers), ip("10.0.0.2"));
        let headers = forwarded(&["203.0.113.9, nonsense"]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &headers), ip("10.0.0.1"));
    }

    #[test]
    fn a_line_that_is_not_text_ends_the_walk() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        // The client sent two lines, the second not text; the proxy appended
        // the client's address to that one. Skipping the line would return
        // what the client wrote in the first.
        let mut headers = forwarded(&["6.6.6.6"]);
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff, 203.0.113.9").unwrap(),
        );
        assert_eq!(trusted.client(ip("10.0.0.1"), &headers), ip("10.0.0.1"));
    }

    #[test]
    fn ports_ipv6_and_mapped_addresses() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, fd00::/8").unwrap();
        let headers = forwarded(&["[2001:db8::7]:4711, 10.0.0.2:80"]);
        assert_eq!(trusted.client(ip("fd00::1"), &headers), ip("2001:db8::7"));
        // A dual-stack listener sees IPv4 peers as mapped IPv6 addresses.
        let headers = forwarded(&["203.0.113.9"]);
        assert_eq!(
            trusted.client(ip("::ffff:10.0.0.1"), &headers),
            ip("203.0.113.9")
        );
        assert_eq!(
            trusted.client(ip("::ffff:198.51.100.4"), &headers),
            ip("198.51.100.4")
        );
    }
}
