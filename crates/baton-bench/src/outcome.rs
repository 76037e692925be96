//! What happened to one request, and how an error is classified.

use std::error::Error as StdError;
use std::io;

/// The outcome classes of the report. The order is the order of the report's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum Outcome {
    /// A complete 2xx response.
    Ok,
    /// A complete response that is not 2xx.
    Status,
    /// The connection was refused (nothing listens).
    Refused,
    /// The connection was reset (RST) or the pipe broke.
    Reset,
    /// The connection closed before a complete response.
    Eof,
    /// No complete response within the per-request timeout.
    Timeout,
    /// Anything else (the message is kept in the failure sample).
    Other,
    /// Echo mode: a complete 200 response that is not the one of its request (another
    /// request's id: out of order, duplicated, from another connection; or not an echo).
    Mismatched,
    /// Echo mode: the connection closed or was reset while the request was outstanding
    /// (written, or due to be written on an idle connection), without the
    /// `Connection: close` that says it was not processed.
    Lost,
}

impl Outcome {
    pub(crate) const FAILURES: [Outcome; 8] = [
        Outcome::Status,
        Outcome::Refused,
        Outcome::Reset,
        Outcome::Eof,
        Outcome::Timeout,
        Outcome::Other,
        Outcome::Mismatched,
        Outcome::Lost,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Status => "status",
            Outcome::Refused => "refused",
            Outcome::Reset => "reset",
            Outcome::Eof => "eof",
            Outcome::Timeout => "timeout",
            Outcome::Other => "other",
            Outcome::Mismatched => "mismatched",
            Outcome::Lost => "lost",
        }
    }

    pub(crate) fn is_failure(self) -> bool {
        self != Outcome::Ok
    }
}

/// Classifies an error of connecting, sending or reading a response.
pub(crate) fn classify(err: &(dyn StdError + 'static)) -> Outcome {
    // The innermost I/O error says most.
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    let mut incomplete = false;
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => return Outcome::Refused,
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe => return Outcome::Reset,
                io::ErrorKind::UnexpectedEof => return Outcome::Eof,
                io::ErrorKind::TimedOut => return Outcome::Timeout,
                _ => {}
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                incomplete = true;
            }
            if h.is_timeout() {
                return Outcome::Timeout;
            }
        }
        source = e.source();
    }
    if incomplete {
        Outcome::Eof
    } else {
        Outcome::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_by_kind() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&refused), Outcome::Refused);
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(classify(&reset), Outcome::Reset);
        let pipe = io::Error::from(io::ErrorKind::BrokenPipe);
        assert_eq!(classify(&pipe), Outcome::Reset);
        let other = io::Error::other("strange");
        assert_eq!(classify(&other), Outcome::Other);
    }

    #[test]
    fn wrapped_io_errors_are_found() {
        #[derive(Debug)]
        struct Wrap(io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl StdError for Wrap {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let e = Wrap(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(classify(&e), Outcome::Reset);
    }
}
