//! Isolation with real traffic, inside network namespaces the tests create (root; CI
//! runs as root). The endpoint namespace gets `table inet rampart_isolate`; the
//! "gateway" namespace plays the Rampart server (10.77.1.2, fd77:1::2), the "origin"
//! namespace the attacker (10.77.2.2, fd77:2::2) and a jump host (10.77.2.3). No
//! packet leaves these namespaces.

mod support;

use rampart_agent::connector::Connector;
use rampart_agent::isolation::{
    self, parse_rules, self_test, IsolationSpec, IsolationStatus, Isolator, KernelState,
};
use rampart_agent::steering_table::TableSpec;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{enter_netns, root_or_skip, serve_in, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER4: &str = "10.77.1.2";
const SERVER6: &str = "fd77:1::2";
const ATTACKER4: &str = "10.77.2.2";
const ATTACKER6: &str = "fd77:2::2";
const JUMP4: &str = "10.77.2.3";
const SERVER_PORT: u16 = 8443;
const SHELL_PORT: u16 = 4444;
const UDP_PORT: u16 = 5353;
/// How long a connection attempt may take before it counts as dropped.
const BLOCKED: Duration = Duration::from_millis(700);

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

/// The support topology plus IPv6 and the jump host's address.
fn topology() -> Topology {
    let topo = Topology::create();
    let ip = |ns: &str, args: &[&str]| {
        let out = topo.exec(ns, "ip", args);
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // `nodad`: the addresses are usable at once, no duplicate detection delay.
    ip(
        &topo.endpoint,
        &["-6", "addr", "add", "fd77:1::1/64", "dev", "togw", "nodad"],
    );
    ip(
        &topo.gateway,
        &["-6", "addr", "add", "fd77:1::2/64", "dev", "toep", "nodad"],
    );
    ip(
        &topo.endpoint,
        &["-6", "addr", "add", "fd77:2::1/64", "dev", "toor", "nodad"],
    );
    ip(
        &topo.origin,
        &["-6", "addr", "add", "fd77:2::2/64", "dev", "toep", "nodad"],
    );
    ip(
        &topo.origin,
        &["addr", "add", &format!("{JUMP4}/24"), "dev", "toep"],
    );
    topo
}

/// TCP echo servers: every connection gets back what it sends.
fn tcp_echo(ns: &str, binds: Vec<SocketAddr>) {
    serve_in(Some(ns), move |ready| async move {
        for bind in binds {
            let listener = tokio::net::TcpListener::bind(bind)
                .await
                .expect("bind echo");
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = stream.read(&mut buf).await {
                            if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
        }
        ready.send(()).expect("ready");
        std::future::pending::<()>().await;
    })
}

fn udp_echo(ns: &str, binds: Vec<SocketAddr>) {
    serve_in(Some(ns), move |ready| async move {
        for bind in binds {
            let socket = tokio::net::UdpSocket::bind(bind).await.expect("bind udp");
            tokio::spawn(async move {
                let mut buf = [0u8; 1500];
                while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                    let _ = socket.send_to(&buf[..n], peer).await;
                }
            });
        }
        ready.send(()).expect("ready");
        std::future::pending::<()>().await;
    })
}

/// Run `f` on a thread inside namespace `ns` (child processes it starts, `nft` and
/// `conntrack`, inherit the namespace).
fn in_ns<R: Send + 'static>(ns: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns);
        f()
    })
    .join()
    .expect("namespace thread")
}

/// The isolation self-test run from inside `ns` with a connector carrying `mark`.
fn self_test_in(
    ns: &str,
    targets: Vec<SocketAddr>,
    mark: Option<u32>,
) -> Result<SocketAddr, isolation::IsolationError> {
    in_ns(ns, move || {
        let connector = Connector {
            mark,
            timeout: BLOCKED,
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(self_test(&targets, &connector))
    })
}

/// Round trip on an open stream: does "ping" come back?
fn echoes(stream: &mut TcpStream) -> bool {
    let _ = stream.set_read_timeout(Some(BLOCKED));
    if stream.write_all(b"ping").is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(stream.read_exact(&mut buf), Ok(()) if &buf == b"ping")
}

fn tcp_ok(ns: &str, target: SocketAddr) -> bool {
    in_ns(ns, move || {
        match TcpStream::connect_timeout(&target, BLOCKED) {
            Ok(mut s) => echoes(&mut s),
            Err(_) => false,
        }
    })
}

fn udp_ok(ns: &str, target: SocketAddr) -> bool {
    udp_from_port_ok(ns, 0, target)
}

/// A UDP round trip from a chosen local port (0: any).
fn udp_from_port_ok(ns: &str, local_port: u16, target: SocketAddr) -> bool {
    in_ns(ns, move || {
        let bind: SocketAddr = if target.is_ipv4() {
            SocketAddr::new([0, 0, 0, 0].into(), local_port)
        } else {
            SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), local_port)
        };
        let Ok(socket) = UdpSocket::bind(bind) else {
            return false;
        };
        let _ = socket.set_read_timeout(Some(BLOCKED));
        if socket.send_to(b"ping", target).is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        matches!(socket.recv_from(&mut buf), Ok((4, from)) if from == target)
    })
}

/// One ICMP(v6) echo over a raw socket (the namespaces have no `ping` binary).
fn ping_ok(ns: &str, target: &str) -> bool {
    let target: IpAddr = target.parse().expect("ip");
    in_ns(ns, move || ping(target).unwrap_or(false))
}

fn ping(target: IpAddr) -> std::io::Result<bool> {
    use socket2::{Domain, Protocol, Socket, Type};
    let (domain, proto, request, reply) = match target {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128u8, 129u8),
    };
    let socket = Socket::new(domain, Type::RAW, Some(proto))?;
    socket.set_read_timeout(Some(BLOCKED))?;
    let id = (std::process::id() as u16).to_be_bytes();
    let mut packet = vec![request, 0, 0, 0, id[0], id[1], 0, 1, b'r', b'p'];
    if target.is_ipv4() {
        // The kernel fills in the ICMPv6 checksum, not the ICMPv4 one.
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    socket.send_to(&packet, &SocketAddr::new(target, 0).into())?;
    let deadline = Instant::now() + BLOCKED;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
    while Instant::now() < deadline {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            return Ok(false);
        };
        // SAFETY: recv_from initialised the first n bytes.
        let data: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        // IPv4 raw sockets deliver the IP header too; IPv6 ones do not.
        let icmp = if target.is_ipv4() {
            let ihl = usize::from(data.first().copied().unwrap_or(0x45) & 0x0f) * 4;
            data.get(ihl..).unwrap_or_default().to_vec()
        } else {
            data
        };
        let from_target = from.as_socket().map(|s| s.ip()) == Some(target);
        if from_target && icmp.first() == Some(&reply) && icmp.get(4..6) == Some(&id[..]) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A state directory removed with the test.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        TempDir(support::data_dir(&format!("isolation-{test}")))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spec(exceptions: &str) -> IsolationSpec {
    IsolationSpec {
        server_addrs: vec![SERVER4.parse().expect("ip"), SERVER6.parse().expect("ip")],
        gateway_addrs: vec![SERVER4.parse().expect("ip")],
        resolvers: vec![],
        exceptions: parse_rules("exceptions.pf", exceptions).expect("valid exceptions"),
    }
}

/// Everything the attacker could be reached by.
fn attacker_reachable(topo: &Topology) -> Vec<(&'static str, bool)> {
    let ep = &topo.endpoint;
    vec![
        ("tcp4", tcp_ok(ep, sock(ATTACKER4, SHELL_PORT))),
        ("tcp6", tcp_ok(ep, sock(ATTACKER6, SHELL_PORT))),
        ("udp4", udp_ok(ep, sock(ATTACKER4, UDP_PORT))),
        ("udp6", udp_ok(ep, sock(ATTACKER6, UDP_PORT))),
        ("icmp4", ping_ok(ep, ATTACKER4)),
        ("icmp6", ping_ok(ep, ATTACKER6)),
    ]
}

#[test]
fn isolation_keeps_the_server_cuts_the_attacker_and_release_restores_everything() {
    if !root_or_skip("isolation_keeps_the_server_cuts_the_attacker_and_release_restores_everything")
    {
        return;
    }
    let topo = topology();
    let dir = TempDir::new("scenario");
    let ep = topo.endpoint.clone();
    tcp_echo(
        &topo.gateway,
        vec![sock(SERVER4, SERVER_PORT), sock(SERVER6, SERVER_PORT)],
    );
    tcp_echo(
        &topo.origin,
        vec![
            sock(ATTACKER4, SHELL_PORT),
            sock(ATTACKER6, SHELL_PORT),
            sock(JUMP4, 22),
            sock(JUMP4, 23),
        ],
    );
    udp_echo(
        &topo.origin,
        vec![sock(ATTACKER4, UDP_PORT), sock(ATTACKER6, UDP_PORT)],
    );
    // A host firewall of the test's own: it must survive release untouched, and its
    // `ct` rule makes the namespace track connections before isolation, as any host
    // with a stateful firewall does (conntrack is off in a namespace nobody asks for it).
    topo.nft_script(
        &ep,
        "table inet other_test {\n\tchain out {\n\t\ttype filter hook output priority 0; policy accept;\n\t\tct state established counter\n\t}\n}\n",
    );
    let other_before = topo.nft(&ep, &["-s", "list", "table", "inet", "other_test"]);

    // Before: everything works, and a "reverse shell" is open to the attacker.
    assert!(
        attacker_reachable(&topo).iter().all(|(_, ok)| *ok),
        "{:?}",
        attacker_reachable(&topo)
    );
    let mut shell = in_ns(&ep, || {
        TcpStream::connect_timeout(&sock(ATTACKER4, SHELL_PORT), Duration::from_secs(2))
            .expect("shell")
    });
    assert!(echoes(&mut shell), "the shell works before isolation");

    // Isolate, with the jump host's SSH as the only exception.
    let state = dir.0.clone();
    let report = in_ns(&ep, move || {
        isolation::isolate(
            &state,
            &Isolator::default(),
            spec("jump = \"10.77.2.3\"\npass out proto tcp to $jump port 22\n"),
            Some("test".into()),
        )
    })
    .expect("isolate");
    assert_eq!(report.state, KernelState::Isolated, "{report:?}");
    assert!(report.conntrack_error.is_none(), "{report:?}");
    assert!(report.flows_cut >= 1, "the shell's flow is cut: {report:?}");
    eprintln!(
        "isolation applied in {:?}, {} flow pairs cut",
        report.load_time, report.flows_cut
    );

    // Kept: the server, over IPv4 and IPv6, and its self-test.
    assert!(tcp_ok(&ep, sock(SERVER4, SERVER_PORT)), "server over IPv4");
    assert!(tcp_ok(&ep, sock(SERVER6, SERVER_PORT)), "server over IPv6");
    assert!(
        ping_ok(&ep, SERVER6),
        "IPv6 to the server (neighbour discovery works)"
    );
    let tested = self_test_in(&ep, vec![sock(SERVER4, SERVER_PORT)], None);
    assert_eq!(tested.expect("self-test"), sock(SERVER4, SERVER_PORT));

    // Cut: the attacker by every protocol and family, and the already-open shell.
    let reach = attacker_reachable(&topo);
    assert!(
        reach.iter().all(|(_, ok)| !*ok),
        "attacker still reachable: {reach:?}"
    );
    assert!(!echoes(&mut shell), "the open shell is cut");

    // The exception: exactly port 22 of the jump host.
    assert!(tcp_ok(&ep, sock(JUMP4, 22)), "jump host port 22 passes");
    assert!(
        !tcp_ok(&ep, sock(JUMP4, 23)),
        "jump host port 23 stays blocked"
    );

    let state = dir.0.clone();
    let status = in_ns(&ep, move || isolation::status(&state, &Isolator::default()));
    assert_eq!(status.expect("status"), IsolationStatus::Isolated);
    let listing = topo.nft(&ep, &["list", "table", "inet", "rampart_isolate"]);
    assert!(listing.contains("policy drop"), "{listing}");

    // Release: this table only; the test's own table is untouched.
    let state = dir.0.clone();
    let status = in_ns(&ep, move || {
        isolation::release(&state, &Isolator::default(), None)
    });
    assert_eq!(status.expect("release"), IsolationStatus::Released);
    assert_eq!(
        topo.nft(&ep, &["-s", "list", "table", "inet", "other_test"]),
        other_before
    );
    let reach = attacker_reachable(&topo);
    assert!(
        reach.iter().all(|(_, ok)| *ok),
        "release restores everything: {reach:?}"
    );
    assert!(tcp_ok(&ep, sock(JUMP4, 23)));
}

#[test]
fn deleting_the_table_by_hand_is_drift_and_start_repairs_it() {
    if !root_or_skip("deleting_the_table_by_hand_is_drift_and_start_repairs_it") {
        return;
    }
    let topo = topology();
    let dir = TempDir::new("drift");
    let ep = topo.endpoint.clone();
    tcp_echo(&topo.origin, vec![sock(ATTACKER4, SHELL_PORT)]);
    let state = dir.0.clone();
    in_ns(&ep, move || {
        isolation::isolate(&state, &Isolator::default(), spec(""), None)
    })
    .expect("isolate");
    let status = |dir: PathBuf| in_ns(&ep, move || isolation::status(&dir, &Isolator::default()));
    assert_eq!(
        status(dir.0.clone()).expect("status"),
        IsolationStatus::Isolated
    );

    // Someone adds a rule: drift, with the reason.
    topo.nft(
        &ep,
        &["add", "rule", "inet", "rampart_isolate", "output", "accept"],
    );
    let state = dir.0.clone();
    let kernel = in_ns(&ep, move || {
        let desired = isolation::state::load(&state)
            .expect("load")
            .expect("state");
        match desired.desired {
            isolation::Desired::Isolated { spec } => Isolator::default().kernel_state(&spec),
            isolation::Desired::Released => panic!("isolated state expected"),
        }
    })
    .expect("kernel state");
    match kernel {
        KernelState::Drift { reasons } => {
            assert!(
                reasons.iter().any(|r| r.contains("chain output has")),
                "{reasons:?}"
            )
        }
        other => panic!("drift expected, got {other:?}"),
    }

    // Someone deletes the table: drift, the attacker is reachable, start repairs it.
    topo.nft(&ep, &["delete", "table", "inet", "rampart_isolate"]);
    assert_eq!(
        status(dir.0.clone()).expect("status"),
        IsolationStatus::Drift
    );
    assert!(tcp_ok(&ep, sock(ATTACKER4, SHELL_PORT)));
    let state = dir.0.clone();
    let outcome = in_ns(&ep, move || {
        isolation::reapply_at_start(&state, &Isolator::default())
    })
    .expect("reapply")
    .expect("a persisted state");
    assert_eq!(outcome.found, KernelState::Absent);
    assert_eq!(outcome.status, IsolationStatus::Isolated);
    assert!(!tcp_ok(&ep, sock(ATTACKER4, SHELL_PORT)), "isolated again");
    // A second start finds it in place and does nothing.
    let state = dir.0.clone();
    let again = in_ns(&ep, move || {
        isolation::reapply_at_start(&state, &Isolator::default())
    })
    .expect("reapply")
    .expect("a persisted state");
    assert_eq!(again.found, KernelState::Isolated);
    assert!(again.applied.is_none());

    // The server moves to a new address: the sets are refreshed in place, the rules
    // (and their fingerprint) stay, and the status follows the new spec.
    let mut moved = spec("");
    moved.server_addrs.push("10.77.1.9".parse().expect("ip"));
    let kernel = in_ns(&ep, move || {
        let isolator = Isolator::default();
        isolator.refresh_sets(&moved, &[]).expect("refresh");
        (
            isolator.kernel_state(&moved),
            isolator.kernel_state(&spec("")),
        )
    });
    assert_eq!(kernel.0.expect("state"), KernelState::Isolated);
    match kernel.1.expect("state") {
        KernelState::Drift { reasons } => assert_eq!(
            reasons,
            vec!["set keep4 holds [10.77.1.2, 10.77.1.9], expected [10.77.1.2]".to_string()]
        ),
        other => panic!("drift against the old spec expected, got {other:?}"),
    }
    let state = dir.0.clone();
    in_ns(&ep, move || {
        isolation::release(&state, &Isolator::default(), None)
    })
    .expect("release");
}

#[test]
fn a_thousand_exception_rules_apply_in_one_batch_within_budget() {
    if !root_or_skip("a_thousand_exception_rules_apply_in_one_batch_within_budget") {
        return;
    }
    let topo = topology();
    let ep = topo.endpoint.clone();
    // The jump host sits among the 1,000 rules, folded into the same set as the rest;
    // a block of one of its other ports after them decides first (pf: last match).
    tcp_echo(
        &topo.origin,
        vec![sock(JUMP4, 22), sock(JUMP4, 2222), sock(ATTACKER4, 22)],
    );
    let mut exceptions: String = (0..999)
        .map(|i| {
            format!(
                "pass out proto tcp to 198.{}.{}.0/24 port {}\n",
                18 + i / 250,
                i % 250,
                1024 + i
            )
        })
        .collect();
    exceptions.push_str(&format!(
        "pass out proto tcp to {JUMP4} port {{ 22 2222 }}\nblock out proto tcp to {JUMP4} port 2222\n"
    ));
    let spec = spec(&exceptions);
    let spec_again = spec.clone();
    let (_, expected) = isolation::ruleset(&spec);
    assert_eq!(
        expected.output_rules, 12,
        "the 1,000 pass rules fold into one rule over a set"
    );
    let timings = in_ns(&ep, move || {
        let isolator = Isolator::default();
        // The first load also creates the table; the second replaces a full one.
        let first = isolator.apply(&spec).expect("apply");
        let started = Instant::now();
        let second = isolator.apply(&spec).expect("re-apply");
        // Load, conntrack clean-up and read-back together.
        let whole = started.elapsed();
        assert_eq!(first.state, KernelState::Isolated, "{first:?}");
        assert_eq!(second.state, KernelState::Isolated, "{second:?}");
        (first.load_time, second.load_time, whole)
    });
    eprintln!(
        "1,000 exception rules: nft -f - took {:?} (create), {:?} (replace); the whole apply with conntrack and read-back {:?}",
        timings.0, timings.1, timings.2
    );
    assert!(tcp_ok(&ep, sock(JUMP4, 22)), "the jump host's ssh passes");
    assert!(
        !tcp_ok(&ep, sock(JUMP4, 2222)),
        "the later block of 2222 wins over the folded pass"
    );
    assert!(
        !tcp_ok(&ep, sock(ATTACKER4, 22)),
        "port 22 elsewhere stays closed"
    );
    // Emptying the exception set by hand is drift, named with the set.
    topo.nft(
        &ep,
        &["flush", "set", "inet", "rampart_isolate", "exc_out_2"],
    );
    let drift = in_ns(&ep, move || Isolator::default().kernel_state(&spec_again));
    match drift.expect("kernel state") {
        KernelState::Drift { reasons } => assert!(
            reasons
                .iter()
                .any(|r| r.contains("exception set exc_out_2 holds 0 elements, expected 1001")),
            "{reasons:?}"
        ),
        other => panic!("drift expected, got {other:?}"),
    }
    in_ns(&ep, || Isolator::default().release()).expect("release");
    // The target is 200 ms; the assertion leaves room for a loaded CI machine.
    assert!(timings.1 < Duration::from_secs(2), "{timings:?}");
}

#[test]
fn dhcp_ports_and_dns_to_the_configured_resolver_stay_open_other_dns_does_not() {
    if !root_or_skip("dhcp_ports_and_dns_to_the_configured_resolver_stay_open_other_dns_does_not") {
        return;
    }
    let topo = topology();
    let dir = TempDir::new("dhcp-dns");
    let ep = topo.endpoint.clone();
    let resolver = "10.77.2.53";
    let out = topo.exec(
        &topo.origin,
        "ip",
        &["addr", "add", "10.77.2.53/24", "dev", "toep"],
    );
    assert!(out.status.success());
    // Stand-ins answering on the DHCP server port and on DNS, on a resolver address
    // and on an address that is not a resolver.
    udp_echo(
        &topo.origin,
        vec![
            sock(ATTACKER4, 67),
            sock(resolver, 53),
            sock(resolver, 5353),
            sock(ATTACKER4, 53),
        ],
    );
    tcp_echo(&topo.origin, vec![sock(resolver, 53), sock(ATTACKER4, 53)]);
    let mut with_resolver = spec("");
    with_resolver.resolvers = vec![resolver.parse().expect("ip")];
    let state = dir.0.clone();
    let report = in_ns(&ep, move || {
        isolation::isolate(&state, &Isolator::default(), with_resolver, None)
    })
    .expect("isolate");
    assert_eq!(report.state, KernelState::Isolated, "{report:?}");

    assert!(
        udp_from_port_ok(&ep, 68, sock(ATTACKER4, 67)),
        "DHCPv4 client port 68 -> 67"
    );
    assert!(
        !udp_from_port_ok(&ep, 69, sock(ATTACKER4, 67)),
        "only the DHCP client port"
    );
    assert!(
        udp_ok(&ep, sock(resolver, 53)),
        "DNS over UDP to the resolver"
    );
    assert!(
        tcp_ok(&ep, sock(resolver, 53)),
        "DNS over TCP to the resolver"
    );
    assert!(
        !udp_ok(&ep, sock(resolver, 5353)),
        "only port 53 of the resolver"
    );
    assert!(!udp_ok(&ep, sock(ATTACKER4, 53)), "no DNS to other servers");
    assert!(
        !tcp_ok(&ep, sock(ATTACKER4, 53)),
        "no DNS over TCP to other servers"
    );
    let state = dir.0.clone();
    in_ns(&ep, move || {
        isolation::release(&state, &Isolator::default(), None)
    })
    .expect("release");
}

#[test]
fn a_pass_out_exception_does_not_admit_a_connection_opened_from_its_port() {
    if !root_or_skip("a_pass_out_exception_does_not_admit_a_connection_opened_from_its_port") {
        return;
    }
    let topo = topology();
    let dir = TempDir::new("reply-direction");
    let ep = topo.endpoint.clone();
    // Listeners on the endpoint (bind shells), and the attacker connecting to them
    // *from* port 22, the port the exception passes towards it.
    tcp_echo(&ep, vec![sock("10.77.2.1", 9998), sock("10.77.2.1", 9999)]);
    // Connections are tracked before isolation, as on any host with a stateful firewall.
    topo.nft_script(
        &ep,
        "table inet other_test {\n\tchain in {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tct state established counter\n\t}\n}\n",
    );
    let from_port_22 = |to_port: u16| {
        in_ns(&topo.origin, move || {
            use socket2::{Domain, Socket, Type};
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
            socket.set_reuse_address(true).expect("reuse");
            socket
                .bind(&sock(ATTACKER4, 22).into())
                .expect("bind port 22");
            socket
                .connect_timeout(&sock("10.77.2.1", to_port).into(), BLOCKED)
                .ok()
                .map(|()| TcpStream::from(socket))
        })
    };
    let mut open = from_port_22(9999).expect("connects before isolation");
    assert!(echoes(&mut open), "works before isolation");
    let state = dir.0.clone();
    in_ns(&ep, move || {
        isolation::isolate(
            &state,
            &Isolator::default(),
            spec("pass out proto tcp to 10.77.2.2 port 22"),
            None,
        )
    })
    .expect("isolate");
    assert!(
        !echoes(&mut open),
        "the open connection from port 22 is cut"
    );
    let inbound = from_port_22(9998).is_some_and(|mut s| echoes(&mut s));
    assert!(
        !inbound,
        "a new connection from the passed port must not count as a reply"
    );
    let state = dir.0.clone();
    in_ns(&ep, move || {
        isolation::release(&state, &Isolator::default(), None)
    })
    .expect("release");
}

/// Every rule shape the parser accepts must be a rule nftables accepts: random token
/// sequences, the ones that parse, all compiled into one table and checked by
/// `nft -c` (check only, nothing is loaded) inside a namespace.
#[test]
fn every_rule_the_parser_accepts_is_accepted_by_nft() {
    if !root_or_skip("every_rule_the_parser_accepts_is_accepted_by_nft") {
        return;
    }
    const TOKENS: &[&str] = &[
        "pass",
        "block",
        "in",
        "out",
        "log",
        "quick",
        "inet",
        "inet6",
        "proto",
        "tcp",
        "udp",
        "icmp",
        "icmp6",
        "{",
        "}",
        ",",
        "from",
        "to",
        "port",
        "any",
        "all",
        "no state",
        "10.0.0.1",
        "10.0.0.0/8",
        "192.0.2.0/24",
        "2001:db8::1",
        "2001:db8::/32",
        "::/0",
        "22",
        "ssh",
        "1000:2000",
        "65535",
        "53",
        "$m4",
        "$m6",
        "$mp",
    ];
    let mut seed: u64 = 0x5eed_1234_abcd_ef01;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut exceptions = Vec::new();
    let mut tries = 0;
    while exceptions.len() < 400 && tries < 200_000 {
        tries += 1;
        // Runs of one action, so rules of one shape meet and fold into sets.
        let action = if (exceptions.len() / 40) % 2 == 0 {
            "pass"
        } else {
            "block"
        };
        let len = (next() % 14) as usize;
        let body: Vec<&str> = (0..len)
            .map(|_| TOKENS[(next() % TOKENS.len() as u64) as usize])
            .collect();
        let text = format!(
            "m4 = \"{{ 10.1.0.0/16 10.2.0.1 }}\"\nm6 = \"2001:db8:6::/48\"\nmp = \"{{ 80 443 }}\"\n{action} {}\n",
            body.join(" ")
        );
        if let Ok(rules) = parse_rules("random.pf", &text) {
            exceptions.extend(rules);
        }
    }
    assert!(
        exceptions.len() >= 100,
        "only {} random rules parsed",
        exceptions.len()
    );
    // Random rules of a few shapes, in runs of one action, with networks that nest
    // and port ranges that overlap: what folding into sets must get right.
    const ADDRS: &[&str] = &[
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.3",
        "192.0.2.0/24",
        "2001:db8::/32",
        "2001:db8:1::1",
    ];
    const PORTS: &[&str] = &["22", "20:30", "25:40", "443", "{ 80 8080 }", "1:65535"];
    const PROTOS: &[&str] = &["tcp", "udp", "{ tcp udp }"];
    let mut shaped = String::new();
    for i in 0..300 {
        let action = if (i / 60) % 2 == 0 { "pass" } else { "block" };
        let dir = ["in", "out"][(next() % 2) as usize];
        let proto = PROTOS[(next() % PROTOS.len() as u64) as usize];
        let addr = ADDRS[(next() % ADDRS.len() as u64) as usize];
        let port = PORTS[(next() % PORTS.len() as u64) as usize];
        let side = ["from", "to"][(next() % 2) as usize];
        shaped.push_str(&format!(
            "{action} {dir} proto {proto} {side} {addr} port {port}\n"
        ));
    }
    exceptions.extend(parse_rules("shaped.pf", &shaped).expect("valid shaped rules"));
    let count = exceptions.len();
    let mut spec = spec("");
    spec.exceptions = exceptions;
    // Loaded for real, not only checked: the kernel refuses some overlapping elements
    // of folded sets only when they are inserted; and read back, so every element
    // nft prints compares equal to what was written.
    let (_, expected) = isolation::ruleset(&spec);
    let folded: usize = expected.exception_sets.iter().map(|(_, e)| e.len()).sum();
    eprintln!(
        "{count} rules: {} exception sets, {folded} elements",
        expected.exception_sets.len()
    );
    let topo = topology();
    let report = in_ns(&topo.endpoint, move || Isolator::default().apply(&spec));
    let report =
        report.unwrap_or_else(|e| panic!("nft refused the compiled rules ({count} rules): {e}"));
    assert_eq!(
        report.state,
        KernelState::Isolated,
        "{count} random rules ({} sets, {folded} elements) read back differently",
        expected.exception_sets.len()
    );
    assert!(
        !expected.exception_sets.is_empty(),
        "random rules should fold into sets somewhere"
    );
}

/// A TCP listener in `ns` that accepts every connection and counts them.
fn counting_listener(ns: &str, bind: SocketAddr) -> Arc<AtomicUsize> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let ns = ns.to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter_netns(&ns);
        let listener = std::net::TcpListener::bind(bind).expect("bind counting listener");
        ready_tx.send(()).expect("ready");
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("listener ready");
    accepted
}

/// The count once accepts have settled (a connect returns after the handshake,
/// before the listener's `accept` counts it).
fn settled(count: &AtomicUsize, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(1);
    while count.load(Ordering::SeqCst) < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // A moment more, so a count past `want` shows too.
    std::thread::sleep(Duration::from_millis(50));
    count.load(Ordering::SeqCst)
}

/// The agent's transparent steering in steer-all mode redirects every outbound TCP
/// connection without the agent's mark to its local listener, so an unmarked
/// self-test "reaches" any server, even one that is down. The self-test uses the
/// agent's marked connector: it succeeds only when the real server answers.
#[test]
fn the_self_test_in_steer_all_mode_takes_the_marked_path_to_the_real_server() {
    if !root_or_skip("the_self_test_in_steer_all_mode_takes_the_marked_path_to_the_real_server") {
        return;
    }
    let topo = topology();
    let dir = TempDir::new("self-test-mark");
    let ep = topo.endpoint.clone();
    const MARK: u32 = 0x5241;
    const STEER_PORT: u16 = 3131;
    // The steering table exactly as the agent installs it in steer-all mode, and a
    // stand-in for the agent's transparent listener that accepts everything.
    let steering = TableSpec {
        name: "rampart_agent".into(),
        port: STEER_PORT,
        mark: MARK,
        exclude_uid: None,
        steer_all: true,
    };
    topo.nft_script(&ep, &steering.create_script());
    let redirected = counting_listener(&ep, sock("127.0.0.1", STEER_PORT));
    let state = dir.0.clone();
    let report = in_ns(&ep, move || {
        isolation::isolate(&state, &Isolator::default(), spec(""), None)
    })
    .expect("isolate");
    assert_eq!(report.state, KernelState::Isolated, "{report:?}");

    // The server is down. Unmarked, the steering redirect answers: a false success.
    let server = sock(SERVER4, SERVER_PORT);
    assert_eq!(
        self_test_in(&ep, vec![server], None).expect("the redirect answers"),
        server
    );
    assert_eq!(
        settled(&redirected, 1),
        1,
        "the unmarked test went to the local listener"
    );
    // Marked, as the agent runs it: the real path, and the truth.
    let err = self_test_in(&ep, vec![server], Some(MARK)).expect_err("the server is down");
    assert!(err.to_string().contains(&server.to_string()), "{err}");
    assert_eq!(
        settled(&redirected, 2),
        1,
        "the marked test is never redirected"
    );

    // The server comes up: the marked self-test reaches it, through isolation.
    let served = counting_listener(&topo.gateway, server);
    assert_eq!(
        self_test_in(&ep, vec![server], Some(MARK)).expect("self-test"),
        server
    );
    assert_eq!(settled(&served, 1), 1, "the real server answered");
    assert_eq!(redirected.load(Ordering::SeqCst), 1);
    // A server address isolation does not keep fails the test, marked or not
    // (isolation decides before the steering redirect).
    let unkept = sock(ATTACKER4, SERVER_PORT);
    assert!(self_test_in(&ep, vec![unkept], Some(MARK)).is_err());
    assert!(self_test_in(&ep, vec![unkept], None).is_err());
    assert_eq!(settled(&redirected, 2), 1);
    let state = dir.0.clone();
    in_ns(&ep, move || {
        isolation::release(&state, &Isolator::default(), None)
    })
    .expect("release");
}

/// `nft -a list chain` of a chain with the set elements left out: the rules and their
/// kernel handles, which a reload of the table would renumber.
fn rules_with_handles(topo: &Topology, chain: &str) -> String {
    topo.nft(
        &topo.endpoint,
        &["-a", "list", "chain", "inet", "rampart_isolate", chain],
    )
}

#[test]
fn a_kept_address_that_moves_is_refreshed_in_place_and_only_its_flows_are_cut() {
    if !root_or_skip("a_kept_address_that_moves_is_refreshed_in_place_and_only_its_flows_are_cut") {
        return;
    }
    let topo = topology();
    let dir = TempDir::new("refresh");
    let ep = topo.endpoint.clone();
    // A second management host (an `[isolation] keep` name) first at 10.77.2.3, then
    // at 10.77.2.4; an exception passes the attacker's 4444 (say, an EDR's console).
    let moved_to = "10.77.2.4";
    let out = topo.exec(
        &topo.origin,
        "ip",
        &["addr", "add", &format!("{moved_to}/24"), "dev", "toep"],
    );
    assert!(out.status.success());
    tcp_echo(
        &topo.origin,
        vec![
            sock(JUMP4, 22),
            sock(moved_to, 22),
            sock(ATTACKER4, SHELL_PORT),
        ],
    );
    let with_keep = |keep: &str| {
        let mut s = spec("pass out proto tcp to 10.77.2.2 port 4444\n");
        s.gateway_addrs.push(keep.parse().expect("ip"));
        s
    };
    let before = with_keep(JUMP4);
    let state = dir.0.clone();
    let first = before.clone();
    in_ns(&ep, move || {
        isolation::isolate(&state, &Isolator::default(), first, Some("case 7".into()))
    })
    .expect("isolate");
    let since = isolation::state::load(&dir.0)
        .expect("load")
        .expect("state")
        .since;
    // Open while isolated: one flow to the kept host, one through the exception.
    let open = |target: SocketAddr| {
        in_ns(&ep, move || {
            TcpStream::connect_timeout(&target, Duration::from_secs(2)).expect("connect")
        })
    };
    let mut to_old_keep = open(sock(JUMP4, 22));
    let mut through_exception = open(sock(ATTACKER4, SHELL_PORT));
    assert!(echoes(&mut to_old_keep) && echoes(&mut through_exception));
    let output_rules = rules_with_handles(&topo, "output");
    let input_rules = rules_with_handles(&topo, "input");

    let after = with_keep(moved_to);
    let state = dir.0.clone();
    let next = after.clone();
    let refreshed = in_ns(&ep, move || {
        isolation::refresh(&state, &Isolator::default(), next)
    })
    .expect("refresh");
    assert_eq!(refreshed.state, KernelState::Isolated, "{refreshed:?}");
    assert!(refreshed.conntrack_error.is_none(), "{refreshed:?}");
    assert_eq!(
        refreshed.flows_cut, 1,
        "only the old address's flow: {refreshed:?}"
    );
    eprintln!("sets refreshed in {:?}", refreshed.load_time);

    // The rules were not reloaded: same rules, same kernel handles.
    assert_eq!(rules_with_handles(&topo, "output"), output_rules);
    assert_eq!(rules_with_handles(&topo, "input"), input_rules);
    let keep4 = topo.nft(&ep, &["list", "set", "inet", "rampart_isolate", "keep4"]);
    assert!(
        keep4.contains(moved_to) && !keep4.contains(JUMP4),
        "{keep4}"
    );
    // The persisted state is the new spec, with the isolation's reason and start.
    let saved = isolation::state::load(&dir.0)
        .expect("load")
        .expect("state");
    assert_eq!(saved.desired, isolation::Desired::Isolated { spec: after });
    assert_eq!(
        (saved.reason.as_deref(), saved.since.as_str()),
        (Some("case 7"), since.as_str())
    );

    // The new address is kept, the old one is not, and its open flow is cut; the
    // exception's flow lives on.
    assert!(tcp_ok(&ep, sock(moved_to, 22)), "the new address is kept");
    assert!(!tcp_ok(&ep, sock(JUMP4, 22)), "the old address is not");
    assert!(
        !echoes(&mut to_old_keep),
        "the old address's open flow is cut"
    );
    assert!(
        echoes(&mut through_exception),
        "a flow through an exception survives a refresh"
    );
    let listed = topo.exec(&ep, "conntrack", &["-L", "-d", JUMP4]);
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains("dport=22"),
        "no conntrack entry left for the old address: {}",
        String::from_utf8_lossy(&listed.stdout)
    );
    let state = dir.0.clone();
    let status = in_ns(&ep, move || isolation::status(&state, &Isolator::default()));
    assert_eq!(status.expect("status"), IsolationStatus::Isolated);

    // Other rules: `refresh` reloads the whole table instead.
    let mut other_rules = with_keep(moved_to);
    other_rules.exceptions =
        parse_rules("x.pf", "pass out proto tcp to 10.77.2.2 port 22").expect("rules");
    let state = dir.0.clone();
    let reloaded = in_ns(&ep, move || {
        isolation::refresh(&state, &Isolator::default(), other_rules)
    })
    .expect("reload");
    assert_eq!(reloaded.state, KernelState::Isolated);
    assert_ne!(rules_with_handles(&topo, "output"), output_rules);
    let state = dir.0.clone();
    in_ns(&ep, move || {
        isolation::release(&state, &Isolator::default(), None)
    })
    .expect("release");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50/p95 of applying and releasing isolation (the whole `isolate`: state file,
/// `nft -f -`, conntrack clean-up, read-back; `release`: state file and delete), with
/// one exception and with 1,000. Not part of the suite: run it with
/// `cargo nextest run -p rampart-agent --test isolation_netns --run-ignored ignored-only isolation_apply_and_release_latency --no-capture`.
#[test]
#[ignore = "measurement: prints p50/p95 of apply and release"]
fn isolation_apply_and_release_latency() {
    if !root_or_skip("isolation_apply_and_release_latency") {
        return;
    }
    const RUNS: usize = 40;
    let topo = topology();
    let dir = TempDir::new("latency");
    let ep = topo.endpoint.clone();
    let thousand: String = (0..1000)
        .map(|i| {
            format!(
                "pass out proto tcp to 198.{}.{}.0/24 port {}\n",
                18 + i / 250,
                i % 250,
                1024 + i
            )
        })
        .collect();
    for (label, exceptions) in [
        (
            "1 exception",
            "pass out proto tcp to 10.77.2.3 port 22\n".to_string(),
        ),
        ("1,000 exceptions", thousand),
    ] {
        let state = dir.0.clone();
        let spec = spec(&exceptions);
        let (mut apply, mut load, mut release) = in_ns(&ep, move || {
            let isolator = Isolator::default();
            let (mut apply, mut load, mut release) = (vec![], vec![], vec![]);
            for _ in 0..RUNS {
                let started = Instant::now();
                let report =
                    isolation::isolate(&state, &isolator, spec.clone(), None).expect("isolate");
                apply.push(started.elapsed());
                load.push(report.load_time);
                assert_eq!(report.state, KernelState::Isolated);
                let started = Instant::now();
                let status = isolation::release(&state, &isolator, None).expect("release");
                release.push(started.elapsed());
                assert_eq!(status, IsolationStatus::Released);
            }
            (apply, load, release)
        });
        for v in [&mut apply, &mut load, &mut release] {
            v.sort();
        }
        eprintln!(
            "ISOLATION LATENCY ({label}, {RUNS} runs): apply p50 {:?} p95 {:?} (nft -f - alone p50 {:?} p95 {:?}); release p50 {:?} p95 {:?}",
            percentile(&apply, 50.0),
            percentile(&apply, 95.0),
            percentile(&load, 50.0),
            percentile(&load, 95.0),
            percentile(&release, 50.0),
            percentile(&release, 95.0),
        );
    }
}

/// `nft monitor` in `ns`, collecting its lines; ready once it has seen a marker table
/// the call creates, so nothing after this call is missed.
fn monitor(topo: &Topology, ns: &str) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "monitor", "tables"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("nft monitor (nftables)");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        topo.nft_script(
            ns,
            "table inet monitor_marker {}\ndelete table inet monitor_marker\n",
        );
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains("monitor_marker") => break,
            _ if Instant::now() > deadline => panic!("nft monitor never reported its marker"),
            _ => {}
        }
    }
    while rx.recv_timeout(Duration::from_millis(100)).is_ok() {}
    (child, rx)
}

/// A reboot empties the kernel: the boot script (`nft -f <data dir>/isolation.nft`,
/// what the boot unit runs before the network comes up) brings back exactly the
/// agent's table; and an agent that starts while the table is missing loads it before
/// its steering table exists, so no steered connection can pass first.
#[test]
fn after_a_reboot_the_boot_script_and_the_agent_start_isolate_before_anything_passes() {
    if !root_or_skip(
        "after_a_reboot_the_boot_script_and_the_agent_start_isolate_before_anything_passes",
    ) {
        return;
    }
    let topo = topology();
    let dir = TempDir::new("reboot");
    let ep = topo.endpoint.clone();
    tcp_echo(&topo.gateway, vec![sock(SERVER4, SERVER_PORT)]);
    tcp_echo(
        &topo.origin,
        vec![sock(ATTACKER4, SHELL_PORT), sock(JUMP4, 22)],
    );
    let state = dir.0.clone();
    let isolated = in_ns(&ep, move || {
        isolation::isolate(
            &state,
            &Isolator::default(),
            spec(&format!("pass out proto tcp to {JUMP4} port 22\n")),
            Some("reboot test".into()),
        )
    })
    .expect("isolate");
    assert_eq!(isolated.state, KernelState::Isolated);
    let boot_script = isolation::state::boot_script_path(&dir.0);
    assert!(boot_script.exists(), "isolating writes the boot script");

    // "Reboot": the kernel has no table; until something loads it, the device is open.
    topo.nft(&ep, &["delete", "table", "inet", "rampart_isolate"]);
    assert!(
        tcp_ok(&ep, sock(ATTACKER4, SHELL_PORT)),
        "open with no table"
    );

    // The boot unit's command, alone: isolated again, exactly as the agent wants it.
    let script = boot_script.display().to_string();
    let out = topo.exec(&ep, "nft", &["-f", &script]);
    assert!(
        out.status.success(),
        "nft -f {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !tcp_ok(&ep, sock(ATTACKER4, SHELL_PORT)),
        "cut by the boot script"
    );
    assert!(
        tcp_ok(&ep, sock(SERVER4, SERVER_PORT)),
        "the server stays reachable"
    );
    assert!(
        tcp_ok(&ep, sock(JUMP4, 22)),
        "the exception is in the boot script"
    );
    let state = dir.0.clone();
    let status = in_ns(&ep, move || isolation::status(&state, &Isolator::default()));
    assert_eq!(status.expect("status"), IsolationStatus::Isolated);

    // A reboot without the boot unit (or an agent restarted after someone deleted the
    // table): the agent itself loads the table before its steering table exists.
    topo.nft(&ep, &["delete", "table", "inet", "rampart_isolate"]);
    let (mut watcher, events) = monitor(&topo, &ep);
    let config = rampart_agent::AgentConfig::from_toml(
        &format!(
            "data_dir = \"{}\"\n[steering]\nmode = \"transparent\"\n[gateway]\nproxy = \"{SERVER4}:{SERVER_PORT}\"\n[transparent]\ntable = \"rampart_agent_reboot\"\n",
            dir.0.display()
        ),
        "reboot agent.toml",
    )
    .expect("agent config");
    let agent = support::start_agent(Some(&ep), config).expect("agent starts");
    assert!(
        !tcp_ok(&ep, sock(ATTACKER4, SHELL_PORT)),
        "isolated with the agent up"
    );
    let log = agent.log();
    assert!(
        log.contains("Isolation at start: isolated"),
        "the agent logs the re-applied isolation: {log}"
    );
    // Stopping the agent removes its steering table only: isolation stays. (The
    // test harness deletes the agent's data directory with it.)
    agent.stop().expect("agent stops");
    let _ = watcher.kill();
    let _ = watcher.wait();
    let lines: Vec<String> = events.try_iter().collect();
    let position = |what: &str| {
        lines
            .iter()
            .position(|l| l.starts_with("add table") && l.contains(what))
            .unwrap_or_else(|| panic!("no `add table ... {what}` in {lines:?}"))
    };
    assert!(
        position("rampart_isolate") < position("rampart_agent_reboot"),
        "the isolation table comes first: {lines:?}"
    );
    // The batch replaces the table in one transaction (`add`, `delete`, `add`): its
    // last word on the isolation table is an `add`, and nothing came after.
    let isolation_events: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("rampart_isolate"))
        .collect();
    assert!(
        isolation_events
            .last()
            .is_some_and(|l| l.starts_with("add table")),
        "the isolation table is left in place: {lines:?}"
    );
    assert!(
        !tcp_ok(&ep, sock(ATTACKER4, SHELL_PORT)),
        "still isolated without the agent"
    );

    // Release deletes the boot script with the table (isolated again first: the
    // harness removed the data directory with the agent).
    let state = dir.0.clone();
    in_ns(&ep, move || {
        isolation::isolate(&state, &Isolator::default(), spec(""), None)?;
        isolation::release(&state, &Isolator::default(), None)
    })
    .expect("isolate and release");
    assert!(!boot_script.exists(), "release deletes the boot script");
    assert!(tcp_ok(&ep, sock(ATTACKER4, SHELL_PORT)), "released");
}

/// CPU time of this process (the agent's threads and the in-process origin), from
/// `/proc/self/stat` (user + system, in clock ticks of 10 ms).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// An origin on `ORIGIN:80` answering `/small` with 100 bytes and anything else with
/// 256 MiB, each on a connection of its own (`Connection: close`).
fn steering_origin(ns: &str) {
    serve_in(Some(ns), |ready| async move {
        let listener = tokio::net::TcpListener::bind(sock(ATTACKER4, 80))
            .await
            .expect("bind origin");
        ready.send(()).expect("ready");
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 1024];
                let n = stream.read(&mut head).await.unwrap_or(0);
                let small = head[..n].starts_with(b"GET /small");
                let size: u64 = if small { 100 } else { 256 << 20 };
                let header = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
                );
                if stream.write_all(header.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![0u8; 256 * 1024];
                let mut left = size;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if stream.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
            });
        }
    });
}

/// Steering throughput and CPU per request through the agent's transparent steering
/// (a bypassed host: client → agent → origin) with no isolation ever, after an
/// isolation was released (state file says released, no table), and with the
/// isolation table loaded (1,000 exceptions, the origin passed by one of them). Not
/// part of the suite: `cargo nextest run -p rampart-agent --test isolation_netns
/// --run-ignored ignored-only steering_cost_of_isolation --no-capture`.
#[test]
#[ignore = "measurement: prints steering throughput and CPU per request"]
fn steering_cost_of_isolation() {
    if !root_or_skip("steering_cost_of_isolation") {
        return;
    }
    const SMALL: usize = 300;
    let topo = topology();
    let ep = topo.endpoint.clone();
    tcp_echo(&topo.gateway, vec![sock(SERVER4, SERVER_PORT)]);
    steering_origin(&topo.origin);
    let dir = support::data_dir("isolation-steering-cost");
    let config = rampart_agent::AgentConfig::from_toml(
        &format!(
            "data_dir = \"{}\"\n[steering]\nmode = \"transparent\"\n[[steering.exceptions]]\nname = \"origin direct\"\nhosts = [\"bulk.test\"]\naction = \"bypass\"\n[gateway]\nproxy = \"{SERVER4}:{SERVER_PORT}\"\n[transparent]\ntable = \"rampart_agent_cost\"\n",
            dir.display()
        ),
        "cost agent.toml",
    )
    .expect("agent config");
    let agent = support::start_agent(Some(&ep), config).expect("agent");
    let url = |path: &str| format!("http://{ATTACKER4}/{path}");
    let bulk = |topo: &Topology| -> f64 { topo.download_speed(&url("bulk")) };

    let small = |topo: &Topology| -> (Duration, Duration) {
        let mut args: Vec<String> = vec![
            "-s".into(),
            "-f".into(),
            "-H".into(),
            "Host: bulk.test".into(),
        ];
        for _ in 0..SMALL {
            args.extend(["-o".into(), "/dev/null".into(), url("small")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (cpu, started) = (process_cpu(), Instant::now());
        let out = topo.exec(&topo.endpoint, "curl", &args);
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            started.elapsed() / SMALL as u32,
            (process_cpu() - cpu) / SMALL as u32,
        )
    };
    let table_present = |topo: &Topology| {
        topo.exec(
            &topo.endpoint,
            "nft",
            &["list", "table", "inet", "rampart_isolate"],
        )
        .status
        .success()
    };
    let mut exceptions: String = (0..999)
        .map(|i| {
            format!(
                "pass out proto tcp to 198.{}.{}.0/24 port {}\n",
                18 + i / 250,
                i % 250,
                1024 + i
            )
        })
        .collect();
    exceptions.push_str(&format!("pass out proto tcp to {ATTACKER4} port 80\n"));
    // Rounds alternate the states, so load from other work on the host falls on each.
    const ROUNDS: usize = 4;
    let labels = [
        "never isolated, no table",
        "released, no table",
        "isolated, 1,000 exceptions, origin passed",
    ];
    // Per state: bulk speeds, and (wall, CPU) per small request of each run.
    type Runs = (Vec<f64>, Vec<(Duration, Duration)>);
    let mut results: Vec<Runs> = vec![Default::default(); 3];
    for round in 0..ROUNDS {
        for (which, result) in results.iter_mut().enumerate() {
            if which == 0 && round > 0 {
                continue; // only before the first isolation
            }
            let state = dir.clone();
            let ex = exceptions.clone();
            let status = in_ns(&ep, move || match which {
                2 => isolation::isolate(&state, &Isolator::default(), spec(&ex), None)
                    .map(|r| IsolationStatus::of(None, &r.state)),
                1 => isolation::release(&state, &Isolator::default(), None),
                _ => Ok(IsolationStatus::Released),
            });
            status.expect("state change");
            assert_eq!(table_present(&topo), which == 2, "{}", labels[which]);
            result.0.push(bulk(&topo));
            result.1.push(small(&topo));
        }
    }
    for (label, (mut bulks, mut smalls)) in labels.iter().zip(results) {
        bulks.sort_by(f64::total_cmp);
        smalls.sort();
        let (wall, cpu) = smalls[smalls.len() / 2];
        eprintln!(
            "STEERING COST ({label}): bulk best {:.0} MB/s, median {:.0} MB/s over {} runs; {SMALL} requests, one connection each, median run: {:?} per request, agent+origin CPU {:?} per request",
            bulks[bulks.len() - 1] / 1e6,
            bulks[bulks.len() / 2] / 1e6,
            bulks.len(),
            wall,
            cpu
        );
    }
    let state = dir.clone();
    in_ns(&ep, move || {
        isolation::release(&state, &Isolator::default(), None)
    })
    .expect("release");
    agent.stop().expect("agent stops");
}
