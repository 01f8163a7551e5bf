//! A real Squid (Debian `squid`) on a free loopback port with its own minimal
//! configuration, used as an upstream egress proxy in chaining tests.

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Squid {
    pub port: u16,
    pub access_log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Squid {
    pub fn start() -> Squid {
        let dir = tempfile::tempdir().unwrap();
        // Squid drops privileges to `proxy`; it must be able to write here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = super::free_port();
        let d = dir.path().display();
        let conf = format!(
            "http_port 127.0.0.1:{port}\n\
             visible_hostname rampart-test-squid\n\
             pid_filename {d}/squid.pid\n\
             access_log stdio:{d}/access.log squid\n\
             cache_log {d}/cache.log\n\
             cache_store_log none\n\
             coredump_dir {d}\n\
             cache deny all\n\
             acl localhost_src src 127.0.0.1/32\n\
             http_access allow localhost_src\n\
             http_access deny all\n\
             shutdown_lifetime 0 seconds\n\
             dns_v4_first on\n"
        );
        let conf_path = dir.path().join("squid.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("squid")
            .arg("-N")
            .arg("-f")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("squid (apt-get install squid)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "squid did not start: {}",
                std::fs::read_to_string(dir.path().join("cache.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Squid {
            port,
            access_log: dir.path().join("access.log"),
            child,
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.access_log).unwrap_or_default()
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
