//! A blocking client for clamd's INSTREAM command (clamd(8), "INSTREAM"):
//! `zINSTREAM\0`, then chunks of a 4-byte big-endian length and the data, a
//! zero-length chunk to end, and one NUL-terminated reply:
//! `stream: OK`, `stream: <signature> FOUND` or `<message> ERROR`.
//!
//! One connection per scan: clamd closes an INSTREAM connection after its
//! reply unless `IDSESSION` is used, and connecting to a local socket costs
//! microseconds next to a scan, so no pool is kept. A download is sent while
//! it streams ([`ClamdClient::instream`]): the connection is opened when the
//! body turns out long, and clamd has the whole body when its last byte is in.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::ClamdConfig;
use crate::error::InspectError;

/// Where clamd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddress {
    Unix(PathBuf),
    Tcp(String),
}

impl ClamdAddress {
    pub fn parse(address: &str) -> Result<ClamdAddress, InspectError> {
        let bad = |message: &str| InspectError::ClamdAddress {
            address: address.to_owned(),
            message: message.to_owned(),
        };
        if let Some(path) = address.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            Ok(ClamdAddress::Unix(PathBuf::from(path)))
        } else if address.starts_with('/') {
            Ok(ClamdAddress::Unix(PathBuf::from(address)))
        } else if let Some(hostport) = address.strip_prefix("tcp:") {
            if !hostport.contains(':') {
                return Err(bad("expected tcp:host:port"));
            }
            Ok(ClamdAddress::Tcp(hostport.to_owned()))
        } else {
            Err(bad(
                "expected unix:/path/to/clamd.ctl, /path/to/clamd.ctl or tcp:host:port",
            ))
        }
    }
}

/// clamd's answer about one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdVerdict {
    Clean,
    Found(String),
}

/// Why clamd gave no verdict.
#[derive(Debug, thiserror::Error)]
pub enum ClamdError {
    #[error("cannot connect to clamd at {address}: {source}")]
    Connect { address: String, source: io::Error },
    #[error("clamd I/O: {0}")]
    Io(#[from] io::Error),
    #[error("clamd error: {0}")]
    Reply(String),
}

#[derive(Debug, Clone)]
pub struct ClamdClient {
    address: ClamdAddress,
    connect_timeout: Duration,
    io_timeout: Duration,
    chunk_size: usize,
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

impl ClamdClient {
    pub fn new(config: &ClamdConfig) -> Result<ClamdClient, InspectError> {
        if config.chunk_size == 0 {
            return Err(InspectError::Limit {
                key: "clamav.chunk_size",
                message: "must be above 0".into(),
            });
        }
        Ok(ClamdClient {
            address: ClamdAddress::parse(&config.address)?,
            connect_timeout: config.connect_timeout,
            io_timeout: config.io_timeout,
            chunk_size: config.chunk_size as usize,
        })
    }

    fn connect(&self) -> Result<Box<dyn Stream + Send>, ClamdError> {
        let fail = |source| ClamdError::Connect {
            address: match &self.address {
                ClamdAddress::Unix(p) => p.display().to_string(),
                ClamdAddress::Tcp(a) => a.clone(),
            },
            source,
        };
        match &self.address {
            ClamdAddress::Unix(path) => {
                // A Unix connect does not block on a live or absent socket.
                let s = UnixStream::connect(path).map_err(fail)?;
                s.set_read_timeout(Some(self.io_timeout))?;
                s.set_write_timeout(Some(self.io_timeout))?;
                Ok(Box::new(s))
            }
            ClamdAddress::Tcp(hostport) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                for addr in hostport.to_socket_addrs().map_err(fail)? {
                    match TcpStream::connect_timeout(&addr, self.connect_timeout) {
                        Ok(s) => {
                            s.set_read_timeout(Some(self.io_timeout))?;
                            s.set_write_timeout(Some(self.io_timeout))?;
                            s.set_nodelay(true)?;
                            return Ok(Box::new(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(fail(last))
            }
        }
    }

    /// Sends `body` with INSTREAM and returns clamd's verdict. The caller
    /// keeps `body` under clamd's StreamMaxLength.
    pub fn scan(&self, body: &mut dyn Read) -> Result<ClamdVerdict, ClamdError> {
        let mut stream = self.instream()?;
        let mut buf = vec![0u8; self.chunk_size];
        loop {
            let n = read_full(body, &mut buf)?;
            if n == 0 {
                break;
            }
            stream.send(&buf[..n])?;
        }
        stream.finish()
    }

    /// Opens an INSTREAM scan that is fed chunk by chunk as the body
    /// arrives ([`ClamdStream::send`]) and answered by
    /// [`ClamdStream::finish`]: clamd receives the body while it streams
    /// instead of after it ended.
    pub fn instream(&self) -> Result<ClamdStream, ClamdError> {
        let mut stream = self.connect()?;
        stream.write_all(b"zINSTREAM\0")?;
        Ok(ClamdStream {
            stream,
            chunk_size: self.chunk_size,
            sent: 0,
            gathered: Vec::with_capacity(self.chunk_size),
        })
    }

    /// `zPING`: whether clamd answers.
    pub fn ping(&self) -> Result<(), ClamdError> {
        let mut stream = self.connect()?;
        stream.write_all(b"zPING\0")?;
        match read_reply(&mut stream)?.as_str() {
            "PONG" => Ok(()),
            other => Err(ClamdError::Reply(other.to_owned())),
        }
    }
}

/// One INSTREAM scan in progress (see [`ClamdClient::instream`]). Small
/// pieces are gathered into INSTREAM chunks of `chunk_size`: a body arrives
/// in network-sized pieces, and clamd pays per chunk.
pub struct ClamdStream {
    stream: Box<dyn Stream + Send>,
    chunk_size: usize,
    /// Bytes taken so far (sent or gathered).
    sent: u64,
    gathered: Vec<u8>,
}

impl ClamdStream {
    /// Bytes taken so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Sends `data` in INSTREAM chunks of at most `chunk_size` bytes; a tail
    /// shorter than that waits for the next call or [`ClamdStream::end`].
    pub fn send(&mut self, mut data: &[u8]) -> Result<(), ClamdError> {
        self.sent += data.len() as u64;
        if !self.gathered.is_empty() {
            let take = data.len().min(self.chunk_size - self.gathered.len());
            self.gathered.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.gathered.len() < self.chunk_size {
                return Ok(());
            }
            let full = std::mem::take(&mut self.gathered);
            self.write_chunk(&full)?;
            self.gathered = full;
            self.gathered.clear();
        }
        let mut pieces = data.chunks_exact(self.chunk_size);
        for piece in &mut pieces {
            self.write_chunk(piece)?;
        }
        self.gathered.extend_from_slice(pieces.remainder());
        Ok(())
    }

    fn write_chunk(&mut self, piece: &[u8]) -> Result<(), ClamdError> {
        let len =
            u32::try_from(piece.len()).map_err(|_| ClamdError::Reply("chunk too large".into()))?;
        if let Err(e) = self
            .stream
            .write_all(&len.to_be_bytes())
            .and_then(|()| self.stream.write_all(piece))
        {
            // clamd closes the socket after "INSTREAM size limit
            // exceeded"; its reply says more than the broken pipe.
            return Err(read_reply(&mut self.stream)
                .ok()
                .filter(|r| !r.is_empty())
                .map(ClamdError::Reply)
                .unwrap_or(ClamdError::Io(e)));
        }
        Ok(())
    }

    /// Ends the stream and waits for clamd's verdict.
    pub fn finish(mut self) -> Result<ClamdVerdict, ClamdError> {
        self.end()?;
        self.reply()
    }

    /// Ends the stream (the zero-length chunk): clamd starts scanning, and
    /// the caller may do other work before [`ClamdStream::reply`].
    pub fn end(&mut self) -> Result<(), ClamdError> {
        if !self.gathered.is_empty() {
            let tail = std::mem::take(&mut self.gathered);
            self.write_chunk(&tail)?;
        }
        self.stream.write_all(&[0, 0, 0, 0])?;
        self.stream.flush()?;
        Ok(())
    }

    /// Waits for clamd's verdict on an ended stream.
    pub fn reply(mut self) -> Result<ClamdVerdict, ClamdError> {
        parse_reply(&read_reply(&mut self.stream)?)
    }
}

impl std::fmt::Debug for ClamdStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClamdStream")
            .field("sent", &self.sent)
            .finish()
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads the NUL-terminated reply (bounded: clamd's replies are one line).
fn read_reply(stream: &mut (dyn Stream + Send)) -> io::Result<String> {
    let mut reply = Vec::new();
    BufReader::new(stream.take(4096)).read_until(0, &mut reply)?;
    if reply.last() == Some(&0) {
        reply.pop();
    }
    Ok(String::from_utf8_lossy(&reply).trim().to_owned())
}

fn parse_reply(reply: &str) -> Result<ClamdVerdict, ClamdError> {
    let body = reply
        .strip_prefix("stream:")
        .map(str::trim)
        .unwrap_or(reply);
    if body == "OK" {
        Ok(ClamdVerdict::Clean)
    } else if let Some(sig) = body.strip_suffix(" FOUND") {
        Ok(ClamdVerdict::Found(sig.trim().to_owned()))
    } else {
        Err(ClamdError::Reply(reply.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse() {
        assert_eq!(parse_reply("stream: OK").unwrap(), ClamdVerdict::Clean);
        assert_eq!(
            parse_reply("stream: Eicar-Test-Signature FOUND").unwrap(),
            ClamdVerdict::Found("Eicar-Test-Signature".into())
        );
        assert!(parse_reply("INSTREAM size limit exceeded. ERROR").is_err());
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            ClamdAddress::parse("unix:/run/clamav/clamd.ctl").unwrap(),
            ClamdAddress::Unix("/run/clamav/clamd.ctl".into())
        );
        assert_eq!(
            ClamdAddress::parse("tcp:127.0.0.1:3310").unwrap(),
            ClamdAddress::Tcp("127.0.0.1:3310".into())
        );
        assert!(ClamdAddress::parse("clamd.ctl").is_err());
    }
}
