//! Bulk bytes through the agent tunnel (issue 6), both directions at once: a client
//! CONNECTs through `rampart agent run` (local proxy → mTLS HTTP/2 tunnel → gateway) to
//! a raw TCP origin, then sends 48 MiB while receiving 48 MiB. Every byte is checked on
//! both sides, half-closes pass through in each direction, and the gateway's record
//! counts the bytes. Flow-control windows (4 MiB per stream) are exceeded many times
//! over, so a window that is not given back, or a send queue that loses or reorders a
//! chunk, shows here.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use support::enrolled_agent::EnrolledAgent;
use support::{eventually, Rampart};

const SIZE: usize = 48 << 20;

/// A deterministic byte stream per seed (xorshift, 8-byte words), so each side can
/// check what it got without holding a copy.
struct Pattern(u64);

impl Pattern {
    /// `buf.len()` is a multiple of 8: the stream is the sequence of whole words.
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// Writes `SIZE` bytes of the seed's pattern, then half-closes.
fn send_pattern(mut stream: TcpStream, seed: u64) {
    let mut pattern = Pattern(seed);
    let mut buf = vec![0u8; 64 << 10];
    let mut sent = 0;
    while sent < SIZE {
        // Varying sizes (whole pattern words): chunk boundaries do not line up with
        // frames or records.
        let n = (SIZE - sent).min(buf.len() - 8 * (sent % 997));
        pattern.fill(&mut buf[..n]);
        stream.write_all(&buf[..n]).expect("sending the pattern");
        sent += n;
    }
    stream.shutdown(Shutdown::Write).expect("half-close");
}

/// Reads until EOF and returns how many bytes matched the seed's pattern from the
/// start (all of them when the stream is intact).
fn check_pattern(mut stream: impl Read, seed: u64) -> usize {
    let mut pattern = Pattern(seed);
    let mut expected = Vec::new();
    let mut buf = vec![0u8; 100_000];
    let mut total = 0;
    let mut offset = 0; // where the next received byte is in `expected`
    loop {
        let n = stream.read(&mut buf).expect("reading the pattern");
        if n == 0 {
            return total;
        }
        // The pattern is generated in 8-byte words: extend it by whole words.
        while expected.len() < offset + n {
            let mut word = [0u8; 8];
            pattern.fill(&mut word);
            expected.extend_from_slice(&word);
        }
        let want = &expected[offset..offset + n];
        if want != &buf[..n] {
            let first = want.iter().zip(&buf[..n]).position(|(a, b)| a != b);
            return total + first.unwrap_or(0);
        }
        total += n;
        offset += n;
        // Keep the comparison buffer small.
        if offset > 1 << 20 {
            expected.drain(..offset);
            offset = 0;
        }
    }
}

#[test]
fn bulk_bytes_cross_the_tunnel_both_ways_intact() {
    let gw = Rampart::start("[proxy]\nallow_loopback_destinations = true\n");
    let agent = EnrolledAgent::start(&gw, "erin", "eng", "");

    // The origin: sends its pattern while checking the client's.
    let origin = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin_port = origin.local_addr().unwrap().port();
    let origin_side = thread::spawn(move || {
        let (stream, _) = origin.accept().unwrap();
        let writer = stream.try_clone().unwrap();
        let sender = thread::spawn(move || send_pattern(writer, 2));
        let got = check_pattern(&stream, 1);
        sender.join().unwrap();
        got
    });

    let (client, reader) = connect_through(agent.proxy, origin_port, Duration::from_secs(120));
    let writer = client.try_clone().unwrap();
    let sender = thread::spawn(move || send_pattern(writer, 1));
    // The reader may already hold the first bytes behind the CONNECT answer.
    let received = check_pattern(reader, 2);
    sender.join().unwrap();
    let origin_received = origin_side.join().unwrap();
    assert_eq!(
        received, SIZE,
        "client got {received} intact bytes of {SIZE}"
    );
    assert_eq!(
        origin_received, SIZE,
        "origin got {origin_received} intact bytes of {SIZE}"
    );

    // The gateway logs the flow with both byte counts once both sides have closed.
    let target = format!("127.0.0.1:{origin_port}");
    let mut record = None;
    let found = eventually(Duration::from_secs(20), || {
        record = gw
            .access_log()
            .into_iter()
            .find(|r| r["method"] == "CONNECT" && r["target"] == target.as_str());
        record.is_some()
    });
    assert!(found, "no tunnel record: {:#?}", gw.access_log());
    let record = record.unwrap();
    assert_eq!(record["device"], agent.device.as_str(), "{record}");
    assert_eq!(record["bytes_from_client"], SIZE as u64, "{record}");
    assert_eq!(record["bytes_to_client"], SIZE as u64, "{record}");
    assert!(record["error"].is_null(), "{record}");
}

/// One line from `reader`, failing the test on EOF.
/// A CONNECT through the agent's local proxy to `127.0.0.1:port`, answered 200: the
/// client stream and a reader past the answer's head (it may hold tunnel bytes already).
fn connect_through(
    proxy: std::net::SocketAddr,
    port: u16,
    timeout: Duration,
) -> (TcpStream, BufReader<TcpStream>) {
    let mut client = TcpStream::connect(proxy).unwrap();
    client.set_read_timeout(Some(timeout)).unwrap();
    write!(
        client,
        "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let status = line(&mut reader);
    assert!(status.contains(" 200 "), "CONNECT answered {status:?}");
    while line(&mut reader) != "\r\n" {}
    (client, reader)
}

fn line(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("reading a line");
    assert!(!line.is_empty(), "the stream ended early");
    line
}

#[test]
fn an_open_tunnel_stream_keeps_working_while_the_gateway_drains() {
    let mut gw = Rampart::start("[proxy]\nallow_loopback_destinations = true\n");
    let agent = EnrolledAgent::start(&gw, "erin", "eng", "");

    // The origin answers each line with "pong <line>", then closes after two.
    let origin = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin_port = origin.local_addr().unwrap().port();
    let origin_side = thread::spawn(move || {
        let (mut stream, _) = origin.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        for _ in 0..2 {
            let got = line(&mut reader);
            write!(stream, "pong {got}").unwrap();
        }
    });

    let (mut client, mut reader) =
        connect_through(agent.proxy, origin_port, Duration::from_secs(20));
    client.write_all(b"one\n").unwrap();
    assert_eq!(line(&mut reader), "pong one\n");

    // Draining: the agent's connection gets a GOAWAY, the open stream goes on.
    gw.signal(nix::sys::signal::Signal::SIGTERM);
    thread::sleep(Duration::from_millis(300));
    client.write_all(b"two\n").unwrap();
    assert_eq!(line(&mut reader), "pong two\n");
    origin_side.join().unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "nothing after the origin closed");

    // With its last tunnel closed, the gateway exits.
    assert_eq!(
        gw.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        gw.stderr()
    );
}
