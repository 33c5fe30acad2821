//! A small blocking client of the control socket.

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::{
    decode, encode, Access, BackendInfo, Counters, DomainInfo, EndpointInfo, FaultInfo,
    InvalidationEvent, MappingPage, PageRequestInfo, PasidBinding, Reply, Request, Response,
    StatusInfo, Subscribed, Translation, MAX_REPLY_LINE,
};

/// How long a [`Client`] waits for a reply (and for a request to be written) unless told
/// otherwise ([`Client::set_timeout`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most of an unexpected line quoted in an error.
const QUOTED: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to the control socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("control socket {path}: no answer within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("control socket {path}: the daemon closed the connection")]
    Closed { path: PathBuf },
    #[error("control socket {path}: unexpected answer ({reason}): {line}")]
    Protocol {
        path: PathBuf,
        /// The line (its beginning, if long).
        line: String,
        reason: String,
    },
    /// The daemon's error response.
    #[error("the daemon refused the request: {0}")]
    Refused(String),
}

/// A connection to the control socket, for requests and replies.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    stream: BufReader<UnixStream>,
    timeout: Option<Duration>,
}

impl Client {
    /// Connect to the control socket at `path`; requests time out after [`DEFAULT_TIMEOUT`].
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, Error> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })?;
        Client::from_stream(stream, path)
    }

    /// A client on an already connected socket (`path` is for messages).
    pub fn from_stream(stream: UnixStream, path: impl Into<PathBuf>) -> Result<Client, Error> {
        let mut c = Client {
            path: path.into(),
            stream: BufReader::new(stream),
            timeout: None,
        };
        c.set_timeout(Some(DEFAULT_TIMEOUT))?;
        Ok(c)
    }

    /// How long to wait for a reply, and for a request to be written (`None`: forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        let s = self.stream.get_ref();
        s.set_read_timeout(timeout)
            .and_then(|()| s.set_write_timeout(timeout))
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        self.timeout = timeout;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Send `req` and return its result. A [`Request::Subscribe`] turns the connection into a
    /// subscription: use [`Client::subscribe`] for it.
    pub fn request(&mut self, req: &Request) -> Result<Response, Error> {
        self.send(req)?;
        let line = self.read_line()?;
        let v = decode::<Reply<serde_json::Value>>(&line)
            .map_err(|e| self.protocol(&line, e))?
            .into_result()
            .map_err(Error::Refused)?;
        Response::from_value(req, v).map_err(|e| self.protocol(&line, e))
    }

    /// Send `req` and return its result as JSON, as the daemon wrote it.
    pub fn request_value(&mut self, req: &Request) -> Result<serde_json::Value, Error> {
        self.call(req)
    }

    /// Send `req` and return its result as `T`.
    fn call<T: DeserializeOwned>(&mut self, req: &Request) -> Result<T, Error> {
        self.send(req)?;
        let line = self.read_line()?;
        decode::<Reply<T>>(&line)
            .map_err(|e| self.protocol(&line, e))?
            .into_result()
            .map_err(Error::Refused)
    }

    pub fn status(&mut self) -> Result<StatusInfo, Error> {
        self.call(&Request::Status)
    }

    pub fn endpoints(&mut self) -> Result<Vec<EndpointInfo>, Error> {
        self.call(&Request::Endpoints)
    }

    pub fn domains(&mut self) -> Result<Vec<DomainInfo>, Error> {
        self.call(&Request::Domains)
    }

    /// One page of `domain`'s mappings (see [`Request::Mappings`]).
    pub fn mappings(
        &mut self,
        domain: u32,
        start: Option<u64>,
        limit: Option<usize>,
    ) -> Result<MappingPage, Error> {
        self.call(&Request::Mappings {
            domain,
            start,
            limit,
        })
    }

    pub fn counters(&mut self) -> Result<Counters, Error> {
        self.call(&Request::Counters)
    }

    pub fn faults(&mut self) -> Result<Vec<FaultInfo>, Error> {
        self.call(&Request::Faults)
    }

    /// `translate` without PASID, unprivileged (with them: [`Client::request`] with a
    /// [`Request::Translate`]).
    pub fn translate(
        &mut self,
        endpoint: u32,
        iova: u64,
        access: Access,
    ) -> Result<Translation, Error> {
        self.call(&Request::translate(endpoint, iova, access))
    }

    pub fn page_requests(&mut self) -> Result<Vec<PageRequestInfo>, Error> {
        self.call(&Request::PageRequests)
    }

    pub fn pasids(&mut self) -> Result<Vec<PasidBinding>, Error> {
        self.call(&Request::Pasids)
    }

    pub fn backend(&mut self) -> Result<BackendInfo, Error> {
        self.call(&Request::Backend)
    }

    /// Subscribe to invalidations: this connection then carries only invalidation lines. Reads
    /// of the subscription wait forever unless told otherwise
    /// ([`Subscription::set_nonblocking`], [`Subscription::set_timeout`]).
    pub fn subscribe(mut self) -> Result<Subscription, Error> {
        self.send(&Request::Subscribe)?;
        let line = self.read_line()?;
        let s = decode::<Reply<Subscribed>>(&line)
            .map_err(|e| self.protocol(&line, e))?
            .into_result()
            .map_err(Error::Refused)?;
        if !s.subscribed {
            return Err(self.protocol(&line, "not subscribed"));
        }
        self.set_timeout(None)?;
        Ok(Subscription {
            path: self.path,
            stream: self.stream,
            seq: s.seq,
            partial: Vec::new(),
        })
    }

    fn send(&mut self, req: &Request) -> Result<(), Error> {
        let mut line = encode(req).map_err(|e| Error::Io {
            path: self.path.clone(),
            source: io::Error::new(ErrorKind::InvalidInput, e),
        })?;
        line.push('\n');
        let r = self.stream.get_mut().write_all(line.as_bytes());
        r.map_err(|e| self.io_error(e))
    }

    /// One whole reply line.
    fn read_line(&mut self) -> Result<String, Error> {
        let mut buf = Vec::new();
        let r = (&mut self.stream)
            .take(MAX_REPLY_LINE)
            .read_until(b'\n', &mut buf);
        match r {
            Ok(0) => return Err(self.closed()),
            Ok(_) if buf.last() == Some(&b'\n') => {}
            Ok(n) if n as u64 >= MAX_REPLY_LINE => {
                return Err(self.protocol(&String::from_utf8_lossy(&buf), "line too long"))
            }
            Ok(_) => return Err(self.closed()),
            Err(e) => return Err(self.io_error(e)),
        }
        String::from_utf8(buf).map_err(|e| {
            let line = String::from_utf8_lossy(e.as_bytes()).into_owned();
            self.protocol(&line, "not UTF-8")
        })
    }

    fn io_error(&self, source: io::Error) -> Error {
        io_error(&self.path, self.timeout, source)
    }

    fn closed(&self) -> Error {
        Error::Closed {
            path: self.path.clone(),
        }
    }

    fn protocol(&self, line: &str, reason: impl ToString) -> Error {
        protocol(&self.path, line, reason)
    }
}

fn io_error(path: &Path, timeout: Option<Duration>, source: io::Error) -> Error {
    match (source.kind(), timeout) {
        (ErrorKind::WouldBlock | ErrorKind::TimedOut, Some(timeout)) => Error::Timeout {
            path: path.to_owned(),
            timeout,
        },
        _ => Error::Io {
            path: path.to_owned(),
            source,
        },
    }
}

fn protocol(path: &Path, line: &str, reason: impl ToString) -> Error {
    let line = line.trim_end();
    let cut = (0..=QUOTED.min(line.len()))
        .rev()
        .find(|&i| line.is_char_boundary(i))
        .unwrap_or(0);
    Error::Protocol {
        path: path.to_owned(),
        line: line[..cut].to_owned(),
        reason: reason.to_string(),
    }
}

/// One line of a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notification {
    Invalidation(InvalidationEvent),
    /// A whole line that is not an invalidation this crate knows (a newer daemon's `scope`):
    /// the consumer must forget every translation.
    NotUnderstood(String),
}

/// A `subscribe` connection: invalidation lines.
#[derive(Debug)]
pub struct Subscription {
    path: PathBuf,
    stream: BufReader<UnixStream>,
    seq: u64,
    /// The beginning of a line not complete yet (non-blocking reads).
    partial: Vec<u8>,
}

impl Subscription {
    /// The `seq` of the last invalidation sent before this subscription began.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// In non-blocking mode [`Subscription::next`] returns `Ok(None)` when no whole line waits.
    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<(), Error> {
        self.stream
            .get_ref()
            .set_nonblocking(nonblocking)
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Wait at most this long in [`Subscription::next`] (`None`: forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), Error> {
        self.stream
            .get_ref()
            .set_read_timeout(timeout)
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// The next line: `Ok(None)` if none is complete (non-blocking mode, or the timeout
    /// passed); [`Error::Closed`] when the daemon ended the subscription (it cuts off
    /// subscribers that read too slowly): the consumer must forget every translation and
    /// subscribe again.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Notification>, Error> {
        loop {
            let room = MAX_REPLY_LINE.saturating_sub(self.partial.len() as u64);
            // `read_until` keeps what it read before an error (WouldBlock) in `partial`.
            let r = (&mut self.stream)
                .take(room)
                .read_until(b'\n', &mut self.partial);
            match r {
                Ok(0) if room == 0 => {
                    let line = String::from_utf8_lossy(&self.partial).into_owned();
                    return Err(protocol(&self.path, &line, "line too long"));
                }
                Ok(0) => {
                    return Err(Error::Closed {
                        path: self.path.clone(),
                    })
                }
                Ok(_) if self.partial.last() == Some(&b'\n') => {
                    let line = std::mem::take(&mut self.partial);
                    let line = String::from_utf8_lossy(&line);
                    return Ok(Some(match decode::<InvalidationEvent>(&line) {
                        Ok(ev) => Notification::Invalidation(ev),
                        Err(_) => Notification::NotUnderstood(line.trim_end().to_owned()),
                    }));
                }
                // End of file or the length limit: the next read tells which.
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None)
                }
                Err(source) => {
                    return Err(Error::Io {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
    }
}

impl AsFd for Subscription {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.get_ref().as_fd()
    }
}

impl AsRawFd for Subscription {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.get_ref().as_raw_fd()
    }
}

/// Subscribe at `path` and call `each` with every line until it returns false or the daemon
/// ends the subscription (`Ok`).
pub fn watch(path: &Path, mut each: impl FnMut(&Notification) -> bool) -> Result<(), Error> {
    let mut sub = Client::connect(path)?.subscribe()?;
    loop {
        match sub.next() {
            Ok(Some(n)) => {
                if !each(&n) {
                    return Ok(());
                }
            }
            Ok(None) => {}
            Err(Error::Closed { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}
