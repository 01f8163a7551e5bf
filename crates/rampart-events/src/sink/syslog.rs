//! Syslog (RFC 5424) over TCP or TLS with octet-counted framing (RFC 6587 §3.4.1,
//! the framing RFC 5425 prescribes for TLS). Payload: the OCSF JSON document or CEF.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use super::{cef, Destination};
use crate::config::{SinkConfig, SyslogFormat};
use crate::event::Event;

/// Facility local0 (16): Rampart's events are not kernel, mail or auth messages.
const FACILITY: u8 = 16;

enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(data).and_then(|_| s.flush()),
            Conn::Tls(s) => s.write_all(data).and_then(|_| s.flush()),
        }
    }
}

pub struct Syslog {
    address: String,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    format: SyslogFormat,
    hostname: String,
    conn: Option<Conn>,
}

impl Syslog {
    pub fn new(c: &SinkConfig) -> Result<Syslog, String> {
        let address = c.address.clone().ok_or("missing `address`")?;
        let tls = if c.tls {
            let host = c.server_name.clone().unwrap_or_else(|| host_of(&address));
            let name = ServerName::try_from(host.clone())
                .map_err(|e| format!("server name `{host}`: {e}"))?;
            Some((
                crate::tls_client::client_config(c.ca_file.as_deref())?,
                name,
            ))
        } else {
            None
        };
        Ok(Syslog {
            address,
            tls,
            format: c.format,
            hostname: c.hostname.clone().unwrap_or_else(local_hostname),
            conn: None,
        })
    }

    fn connect(&self) -> Result<Conn, String> {
        let addr = self
            .address
            .to_socket_addrs()
            .map_err(|e| format!("{}: {e}", self.address))?
            .next()
            .ok_or_else(|| format!("{}: no address", self.address))?;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_write_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Conn::Plain(tcp)),
            Some((config, name)) => {
                let conn = rustls::ClientConnection::new(config.clone(), name.clone())
                    .map_err(|e| e.to_string())?;
                let mut stream = rustls::StreamOwned::new(conn, tcp);
                // Finish the handshake now so certificate errors are reported as such.
                while stream.conn.is_handshaking() {
                    stream
                        .conn
                        .complete_io(&mut stream.sock)
                        .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
                }
                Ok(Conn::Tls(Box::new(stream)))
            }
        }
    }
}

impl Destination for Syslog {
    fn deliver(&mut self, events: &[Event]) -> Result<(), String> {
        let mut buf = Vec::new();
        for e in events {
            let msg = message(e, self.format, &self.hostname);
            buf.extend_from_slice(format!("{} ", msg.len()).as_bytes());
            buf.extend_from_slice(msg.as_bytes());
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err("not connected".into());
        };
        if let Err(e) = conn.write_all(&buf) {
            self.conn = None;
            return Err(format!("send to {}: {e}", self.address));
        }
        Ok(())
    }
}

/// One RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`.
pub fn message(e: &Event, format: SyslogFormat, hostname: &str) -> String {
    let severity = match e.severity_id {
        1 => 6, // informational
        2 => 5, // notice
        3 => 4, // warning
        4 => 3, // error
        _ => 2, // critical
    };
    let pri = FACILITY * 8 + severity;
    let ts = crate::render::time_text(e.time);
    let msgid = e.event_type().map_or("event", |t| t.as_str());
    let payload = match format {
        SyslogFormat::Json => serde_json::to_string(e).unwrap_or_default(),
        SyslogFormat::Cef => cef::render(e),
    };
    format!(
        "<{pri}>1 {ts} {} rampart {} {msgid} - {payload}",
        header_field(hostname),
        std::process::id()
    )
}

/// RFC 5424 header fields are printable US-ASCII without spaces, at most 255 characters.
fn header_field(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if cleaned.is_empty() {
        "-".into()
    } else {
        cleaned
    }
}

fn host_of(address: &str) -> String {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .to_string()
}

fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "rampart".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::FlowSummary;

    #[test]
    fn message_has_the_rfc5424_header_and_json_payload() {
        let mut f = FlowSummary::new(uuid::Uuid::nil(), 1_700_000_000_123);
        f.user = Some("alice".into());
        let e = f.http_event();
        let m = message(&e, SyslogFormat::Json, "gw 1");
        assert!(
            m.starts_with("<134>1 2023-11-14T22:13:20.123Z gw1 rampart "),
            "{m}"
        );
        let json = m.split_once(" http - ").unwrap().1;
        let back: Event = serde_json::from_str(json).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn host_is_taken_from_the_address() {
        assert_eq!(host_of("siem.example:6514"), "siem.example");
        assert_eq!(host_of("[::1]:6514"), "::1");
    }
}
