//! Fetching what a caller names: URL sources and webhook callbacks. Nothing a
//! caller names is fetched from loopback, private, link-local, multicast or
//! unspecified addresses (IPv4-mapped IPv6 included) unless the operator allowed
//! that network (`--allow-network CIDR`). The check runs after DNS resolution, the
//! connection is pinned to the address that was checked (no second lookup for a
//! rebinding DNS server to answer), and every redirect is checked the same way.
//!
//! URL sources are ingested: copied into storage once, with a size limit, a total
//! time limit and resume by `Range` across attempts; probing and every task read
//! that copy, so all renditions come from the same bytes and a slow origin costs
//! only its own job.

use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Which networks a caller-named URL may reach.
#[derive(Debug, Clone, Default)]
pub struct NetPolicy {
    /// Networks the operator allowed although they are not public.
    pub allow: Vec<IpNet>,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is malformed or names a network that is not allowed: bad input.
    #[error("{0}")]
    Refused(String),
    /// The origin failed (connection, status, timeout): another attempt may work.
    #[error("{0}")]
    Failed(String),
    /// The body is larger than the limit: bad input.
    #[error("the source is larger than the limit of {0} bytes")]
    TooLarge(u64),
    /// The local disk it is copied to is full: the farm's trouble, not the source's.
    #[error("spooling the source: {0}")]
    NoSpace(std::io::Error),
}

/// Most redirects followed for one fetch.
const MAX_REDIRECTS: usize = 5;

impl NetPolicy {
    /// Parses `--allow-network` values (`10.0.0.0/8`, `::1/128`, or a bare address).
    pub fn parse(allowed: &[String]) -> Result<NetPolicy, String> {
        let allow = allowed
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("--allow-network {s}: not a network in CIDR form (e.g. 10.0.0.0/8)"))
            })
            .collect::<Result<_, _>>()?;
        Ok(NetPolicy { allow })
    }

    /// Whether `ip` may be reached: public, or in an allowed network.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        !is_internal(ip) || self.allow.iter().any(|n| n.contains(&ip))
    }

    /// Checks a URL whose host is an address literal (or `localhost`), without DNS:
    /// what can be refused when the request arrives. Hostnames pass here and are
    /// checked when they are fetched.
    pub fn check_literal(&self, url: &str) -> Result<(), FetchError> {
        let u = reqwest::Url::parse(url).map_err(|e| FetchError::Refused(format!("{url}: {e}")))?;
        let ip = match u.host() {
            Some(url::Host::Ipv4(a)) => IpAddr::V4(a),
            Some(url::Host::Ipv6(a)) => IpAddr::V6(a),
            Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost") => {
                IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            }
            _ => return Ok(()),
        };
        if self.permits(ip) { Ok(()) } else { Err(refused(url, ip)) }
    }

    /// Resolves a URL's host and checks every address; returns a client pinned to
    /// the checked addresses, with redirects off (the caller follows them through
    /// this check again).
    async fn pinned_client(&self, url: &reqwest::Url, timeout: Duration) -> Result<reqwest::Client, FetchError> {
        let host = url.host_str().ok_or_else(|| FetchError::Refused(format!("{url}: no host")))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::time::timeout(Duration::from_secs(10), tokio::net::lookup_host((bare, port)))
            .await
            .map_err(|_| FetchError::Failed(format!("resolving {host}: timed out")))?
            .map_err(|e| FetchError::Failed(format!("resolving {host}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(FetchError::Failed(format!("resolving {host}: no addresses")));
        }
        if let Some(bad) = addrs.iter().find(|a| !self.permits(a.ip())) {
            return Err(refused(url.as_str(), bad.ip()));
        }
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .resolve_to_addrs(bare, &addrs)
            .connect_timeout(Duration::from_secs(10))
            .timeout(timeout)
            .build()
            .map_err(|e| FetchError::Failed(e.to_string()))
    }

    /// Sends a request built by `build` to `url`, following up to five redirects,
    /// each checked like the first. Returns the final response.
    pub async fn send(
        &self,
        url: &str,
        timeout: Duration,
        build: impl Fn(&reqwest::Client, reqwest::Url) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, FetchError> {
        let mut url = reqwest::Url::parse(url).map_err(|e| FetchError::Refused(format!("{url}: {e}")))?;
        for _ in 0..=MAX_REDIRECTS {
            if !matches!(url.scheme(), "http" | "https") {
                return Err(FetchError::Refused(format!("{url}: only http(s) URLs are fetched")));
            }
            let client = self.pinned_client(&url, timeout).await?;
            let resp = build(&client, url.clone()).send().await.map_err(|e| FetchError::Failed(describe(&e)))?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let next = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| FetchError::Failed(format!("HTTP {} without a Location", resp.status())))?;
            url = url.join(next).map_err(|e| FetchError::Refused(format!("redirect to {next}: {e}")))?;
        }
        Err(FetchError::Failed(format!("more than {MAX_REDIRECTS} redirects")))
    }
}

fn refused(url: &str, ip: IpAddr) -> FetchError {
    FetchError::Refused(format!("{url} resolves to {ip}, which is not a public address (an operator can allow it with --allow-network)"))
}

/// Loopback, private, link-local, shared (CGNAT), multicast, broadcast, reserved
/// or unspecified: anything that is not a public unicast address.
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_broadcast()
                || a.is_unspecified()
                || a.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] >= 240
        }
        IpAddr::V6(a) => {
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_unique_local()
                || a.is_unicast_link_local()
                // IPv4-compatible (deprecated) and NAT64 forms of internal IPv4.
                || (a.segments()[..6] == [0; 6])
                || (a.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && is_internal(IpAddr::V4(std::net::Ipv4Addr::from(
                    (u32::from(a.segments()[6]) << 16) | u32::from(a.segments()[7]),
                ))))
        }
    }
}

/// The most useful words of a reqwest error (its sources, e.g. "connection refused").
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s = format!("{s}: {inner}");
        source = inner.source();
    }
    s
}

/// Limits of one ingest.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    pub max_bytes: u64,
    /// For the whole copy, across resumes within one attempt.
    pub total: Duration,
    /// With no bytes arriving for this long, the attempt fails (and resumes later).
    pub stall: Duration,
}

/// Copies `url` into the local file `part`, resuming from its current length with a
/// `Range` request when the origin supports it (206), starting over when it does
/// not (200). A body without a Content-Length is read to its end. Returns the size.
pub async fn ingest(policy: &NetPolicy, url: &str, part: &Path, limits: IngestLimits) -> Result<u64, FetchError> {
    let io = |e: std::io::Error| {
        if proto::disk::is_out_of_space(&e) { FetchError::NoSpace(e) } else { FetchError::Failed(format!("spooling the source: {e}")) }
    };
    let have = tokio::fs::metadata(part).await.map(|m| m.len()).unwrap_or(0);
    let run = async {
        let resp = policy
            .send(url, limits.total, |c, u| {
                let r = c.get(u);
                if have > 0 { r.header(reqwest::header::RANGE, format!("bytes={have}-")) } else { r }
            })
            .await?;
        let status = resp.status();
        let resumed = status == reqwest::StatusCode::PARTIAL_CONTENT && have > 0;
        if !(status.is_success()) {
            let what = format!("HTTP {status}");
            // 4xx (other than 408/429) will not change on a retry: bad input.
            return Err(if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
                FetchError::Refused(what)
            } else {
                FetchError::Failed(what)
            });
        }
        let mut size = if resumed { have } else { 0 };
        if let Some(len) = resp.content_length()
            && size + len > limits.max_bytes
        {
            return Err(FetchError::TooLarge(limits.max_bytes));
        }
        let mut file = if resumed {
            tokio::fs::OpenOptions::new().append(true).open(part).await.map_err(io)?
        } else {
            tokio::fs::File::create(part).await.map_err(io)?
        };
        let mut resp = resp;
        loop {
            let chunk = match tokio::time::timeout(limits.stall, resp.chunk()).await {
                Err(_) => return Err(FetchError::Failed(format!("no data for {} s", limits.stall.as_secs()))),
                Ok(Err(e)) => return Err(FetchError::Failed(describe(&e))),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => c,
            };
            size += chunk.len() as u64;
            if size > limits.max_bytes {
                return Err(FetchError::TooLarge(limits.max_bytes));
            }
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        if size == 0 {
            return Err(FetchError::Refused("the source is empty".into()));
        }
        Ok(size)
    };
    match tokio::time::timeout(limits.total, run).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Failed(format!("not copied within {} s", limits.total.as_secs()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_unless_allowed() {
        let none = NetPolicy::default();
        for (ip, public) in [
            ("8.8.8.8", true),
            ("2606:4700::1111", true),
            ("127.0.0.1", false),
            ("10.1.2.3", false),
            ("172.16.0.1", false),
            ("192.168.1.1", false),
            ("169.254.169.254", false),
            ("100.64.0.1", false),
            ("0.0.0.0", false),
            ("224.0.0.1", false),
            ("255.255.255.255", false),
            ("::1", false),
            ("::", false),
            ("fe80::1", false),
            ("fd00::1", false),
            ("ff02::1", false),
            ("::ffff:127.0.0.1", false),
            ("::ffff:169.254.169.254", false),
            ("::ffff:8.8.8.8", true),
            ("64:ff9b::a9fe:a9fe", false),
        ] {
            assert_eq!(none.permits(ip.parse().unwrap()), public, "{ip}");
        }
        let lab = NetPolicy::parse(&["10.0.0.0/8".into(), "::1".into()]).unwrap();
        assert!(lab.permits("10.9.9.9".parse().unwrap()));
        assert!(lab.permits("::ffff:10.9.9.9".parse().unwrap()));
        assert!(lab.permits("::1".parse().unwrap()));
        assert!(!lab.permits("127.0.0.1".parse().unwrap()));
        assert!(NetPolicy::parse(&["10.0.0.0/33".into()]).is_err());
    }

    #[test]
    fn literal_hosts_are_checked_at_submit() {
        let none = NetPolicy::default();
        for (url, ok) in [
            ("http://127.0.0.1:8600/admin", false),
            ("http://[::1]/x", false),
            ("http://[::ffff:7f00:1]/x", false),
            ("http://169.254.169.254/latest/meta-data", false),
            ("http://localhost:9/x", false),
            ("http://media.example.com/x.mp4", true),
            ("https://93.184.216.34/x.mp4", true),
        ] {
            assert_eq!(none.check_literal(url).is_ok(), ok, "{url}");
        }
    }
}
