//! Where to listen: a TCP address or a Unix socket path, parsed from what a user
//! writes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::Error;

/// Where to listen: a TCP address or a Unix socket path.
///
/// Parses from `127.0.0.1:8080`, `[::1]:8080`, `localhost:8080`, `:8080` (every IPv4
/// interface, as in Go) and `unix:/run/app.sock`.
///
/// ```
/// use baton::ListenAddr;
///
/// let addr: ListenAddr = "127.0.0.1:8080".parse()?;
/// assert_eq!(addr.to_string(), "127.0.0.1:8080");
/// let unix: ListenAddr = "unix:/run/app.sock".parse()?;
/// assert_eq!(unix.to_string(), "unix:/run/app.sock");
/// assert!("127.0.0.1".parse::<ListenAddr>().is_err());
/// # Ok::<(), baton::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ListenAddr {
    /// A TCP socket address (IPv4 or IPv6).
    Tcp(SocketAddr),
    /// A Unix stream socket at this path.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| Error::InvalidAddress {
            input: s.into(),
            reason: reason.into(),
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(invalid("the Unix socket path is empty"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(ListenAddr::Tcp(addr));
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(invalid("no port"));
        };
        let port: u16 = port
            .parse()
            .map_err(|_| invalid("the port is not a number from 0 to 65535"))?;
        let ip = match host {
            "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            _ if host.contains(':') && !host.starts_with('[') => {
                return Err(invalid("an IPv6 address needs brackets, e.g. [::1]:8080"));
            }
            _ => {
                return Err(invalid(
                    "the host is not an IP address (only `localhost` is resolved)",
                ));
            }
        };
        Ok(ListenAddr::Tcp(SocketAddr::new(ip, port)))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A listen address, or text that parses as one: what [`Server::bind`] takes.
///
/// [`Server::bind`]: crate::http::Server::bind
pub trait IntoListenAddr: sealed::Sealed {
    /// Converts, parsing text.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`] for text that is not an address.
    fn into_listen_addr(self) -> Result<ListenAddr, Error>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::ListenAddr {}
    impl Sealed for &super::ListenAddr {}
    impl Sealed for &str {}
    impl Sealed for String {}
    impl Sealed for &String {}
}

impl IntoListenAddr for ListenAddr {
    fn into_listen_addr(self) -> Result<ListenAddr, Error> {
        Ok(self)
    }
}

impl IntoListenAddr for &ListenAddr {
    fn into_listen_addr(self) -> Result<ListenAddr, Error> {
        Ok(self.clone())
    }
}

impl IntoListenAddr for &str {
    fn into_listen_addr(self) -> Result<ListenAddr, Error> {
        self.parse()
    }
}

impl IntoListenAddr for String {
    fn into_listen_addr(self) -> Result<ListenAddr, Error> {
        self.parse()
    }
}

impl IntoListenAddr for &String {
    fn into_listen_addr(self) -> Result<ListenAddr, Error> {
        self.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let parse = |s: &str| s.parse::<ListenAddr>().unwrap().to_string();
        assert_eq!(parse("127.0.0.1:80"), "127.0.0.1:80");
        assert_eq!(parse("[::1]:0"), "[::1]:0");
        assert_eq!(parse(":8080"), "0.0.0.0:8080");
        assert_eq!(parse("localhost:9"), "127.0.0.1:9");
        assert_eq!(parse("unix:/tmp/x.sock"), "unix:/tmp/x.sock");
    }

    #[test]
    fn malformed_addresses_say_what_is_wrong() {
        for (input, reason) in [
            ("127.0.0.1", "no port"),
            ("127.0.0.1:http", "the port is not a number"),
            ("127.0.0.1:70000", "the port is not a number"),
            ("example.com:80", "not an IP address"),
            ("::1:80", "needs brackets"),
            ("unix:", "path is empty"),
        ] {
            let err = input.parse::<ListenAddr>().unwrap_err().to_string();
            assert!(err.contains(&format!("`{input}`")), "{err}");
            assert!(err.contains(reason), "{input}: {err}");
        }
    }
}
