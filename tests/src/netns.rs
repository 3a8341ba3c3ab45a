//! Network namespaces and veth pairs that tests create and always delete (on drop, so also when
//! a test fails). Names carry the test process id, so parallel or leftover runs never collide.

use std::{fs::File, os::fd::AsRawFd, process::Command, thread};

/// Runs `ip ARGS`, failing with the command and its stderr.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// A network namespace, deleted on drop (which also deletes the interfaces inside it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("sgt-{}-{tag}", std::process::id());
        // A leftover from a crashed run with the same pid: remove it first.
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name]).expect("create namespace");
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]).expect("lo up");
        ns
    }

    /// Runs `ip -n NS ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets created there stay in the
    /// namespace; the calling thread's namespace is untouched.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::scope(|s| {
            s.spawn(|| {
                let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: plain syscall on an fd we own; affects only this thread.
                let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Two namespaces joined by a veth pair, with IPv4 and IPv6 documentation addresses:
/// `tx` has 192.0.2.1 / 2001:db8::1, `rx` has 192.0.2.2 / 2001:db8::2.
pub struct VethPair {
    pub tx: Netns,
    pub rx: Netns,
    pub tx_if: String,
    pub rx_if: String,
}

pub const TX4: &str = "192.0.2.1";
pub const RX4: &str = "192.0.2.2";
pub const TX6: &str = "2001:db8::1";
pub const RX6: &str = "2001:db8::2";

impl VethPair {
    pub fn new(tag: &str) -> Self {
        let tx = Netns::new(&format!("{tag}-tx"));
        let rx = Netns::new(&format!("{tag}-rx"));
        let id = std::process::id() % 100_000;
        let tx_if = format!("sg{id}{tag}t");
        let rx_if = format!("sg{id}{tag}r");
        assert!(rx_if.len() <= 15, "interface name too long: {rx_if}");
        ip(&[
            "link", "add", &tx_if, "netns", &tx.name, "type", "veth", "peer", "name", &rx_if,
            "netns", &rx.name,
        ])
        .expect("create veth pair");
        for (ns, dev, a4, a6) in [(&tx, &tx_if, TX4, TX6), (&rx, &rx_if, RX4, RX6)] {
            ns.ip(&["addr", "add", &format!("{a4}/24"), "dev", dev])
                .expect("add IPv4 address");
            ns.ip(&["addr", "add", &format!("{a6}/64"), "dev", dev, "nodad"])
                .expect("add IPv6 address");
            ns.ip(&["link", "set", dev, "up"]).expect("link up");
        }
        Self {
            tx,
            rx,
            tx_if,
            rx_if,
        }
    }
}
