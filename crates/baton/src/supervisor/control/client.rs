//! The client side of the control protocol, the one implementation: `baton reload`,
//! `stop`, `restart` and `status` (through a small runtime), and a master's worker
//! asked to restart itself (which asks its master instead).

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{Line, Request};

/// How a conversation with a master ended: its final line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `ok TEXT`: the request was carried out.
    Ok(String),
    /// `error TEXT`: it was refused or failed, and why.
    Error(String),
}

/// One conversation with a master: the request sent, its answer read line by line.
#[derive(Debug)]
pub struct Conversation {
    lines: tokio::io::Lines<BufReader<UnixStream>>,
}

impl Conversation {
    /// Connects to the control socket at `socket` and sends `request`.
    ///
    /// # Errors
    ///
    /// The error of connecting or writing (`NotFound` or `ConnectionRefused` when no
    /// master listens there).
    pub async fn open(socket: &Path, request: Request) -> io::Result<Conversation> {
        // A full accept queue answers a non-blocking connect with `WouldBlock`: wait for
        // room, as a blocking connect would (the caller bounds the whole conversation).
        let mut stream = loop {
            match UnixStream::connect(socket).await {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => break other?,
            }
        };
        stream.write_all(format!("{request}\n").as_bytes()).await?;
        Ok(Conversation {
            lines: BufReader::new(stream).lines(),
        })
    }

    /// The next line of the answer; after a final one (`ok` or `error`) there is none.
    /// A line of a later version of the protocol is `InvalidData`: a caller that only
    /// waits for some lines may skip it.
    ///
    /// # Errors
    ///
    /// The error of reading; `UnexpectedEof` when the master closed the connection
    /// without a final line; `InvalidData` when the socket answered something else
    /// than the control protocol.
    pub async fn next_line(&mut self) -> io::Result<Line> {
        let Some(line) = self.lines.next_line().await? else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the master closed the connection without an outcome",
            ));
        };
        Line::decode(&line).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the control socket answered something else than the control protocol: {line:?}"
                ),
            )
        })
    }
}

/// Sends `request` to the control socket at `socket` and passes every line before the
/// final one to `on_line` (progress, or status items), as it comes.
///
/// # Errors
///
/// Those of [`Conversation`]; `TimedOut` when no final line came within `timeout`.
pub async fn ask(
    socket: &Path,
    request: Request,
    timeout: Duration,
    mut on_line: impl FnMut(Line),
) -> io::Result<Answer> {
    let conversation = async {
        let mut c = Conversation::open(socket, request).await?;
        loop {
            match c.next_line().await? {
                Line::Ok(text) => return Ok(Answer::Ok(text)),
                Line::Error(text) => return Ok(Answer::Error(text)),
                other => on_line(other),
            }
        }
    };
    tokio::time::timeout(timeout, conversation)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no outcome within {timeout:?}"),
            ))
        })
}

/// [`ask`] for a program without a runtime: runs it on a current-thread runtime of its
/// own.
///
/// # Errors
///
/// Those of [`ask`], and the error of building the runtime.
pub fn ask_blocking(
    socket: &Path,
    request: Request,
    timeout: Duration,
    on_line: impl FnMut(Line),
) -> io::Result<Answer> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(ask(socket, request, timeout, on_line))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    async fn master_answering(script: &'static str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut asked = [0u8; 7];
            s.read_exact(&mut asked).await.unwrap();
            assert_eq!(&asked, b"reload\n");
            s.write_all(script.as_bytes()).await.unwrap();
            // Held open: the client decides when the conversation ended.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        (dir, path)
    }

    #[tokio::test]
    async fn progress_lines_come_before_the_final_answer() {
        let (_dir, path) =
            master_answering("progress spawned gen 2 pid 7\nok reloaded\nok ignored\n").await;
        let mut seen = Vec::new();
        let answer = ask(&path, Request::Reload, Duration::from_secs(10), |l| {
            seen.push(l)
        })
        .await
        .unwrap();
        assert_eq!(answer, Answer::Ok("reloaded".into()));
        assert_eq!(seen.len(), 1, "{seen:?}");
    }

    #[tokio::test]
    async fn a_foreign_answer_a_silence_and_no_master_are_errors() {
        let (_dir, path) = master_answering("HTTP/1.1 400 Bad Request\n").await;
        let e = ask(&path, Request::Reload, Duration::from_secs(10), |_| {})
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");

        let (_dir, path) = master_answering("").await;
        let e = ask(&path, Request::Reload, Duration::from_millis(200), |_| {})
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");

        let e = ask(
            &_dir.path().join("nobody"),
            Request::Reload,
            Duration::from_secs(1),
            |_| {},
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }
}
