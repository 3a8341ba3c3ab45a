//! The daemon out of file descriptors: `sipguard run` in a namespace of its own (a veth pair
//! inside it, no addresses), its RLIMIT_NOFILE lowered with `prlimit` to a few more than it
//! holds, then 1,100 idle connections to its /metrics port. It must not spin on the failing
//! `accept` (its CPU time stays a fraction of the wall time); once they close, /metrics answers
//! and SIGHUP reloads. Run as root.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use sipguard_tests::{harness::Instance, netns::Netns};

const CONNECTIONS: usize = 1_100;

const CONFIG: &str = "[[rule]]\nprefix = \"+232\"\naction = \"block\"\n";

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// A TCP connection to 127.0.0.1:9960 started without waiting for it to complete.
fn connect_nb() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain syscalls; the fd is owned by the returned OwnedFd.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 9960u16.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let err = std::io::Error::last_os_error();
        assert!(
            rc == 0 || err.raw_os_error() == Some(libc::EINPROGRESS),
            "connect: {err}"
        );
        std::os::fd::OwnedFd::from_raw_fd(fd)
    }
}

fn scrape() -> std::io::Result<String> {
    let mut s = TcpStream::connect("127.0.0.1:9960")?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn out_of_descriptors_the_daemon_does_not_spin_and_recovers() {
    // This process needs descriptors for every connection.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur = lim.rlim_max.max(4096);
    lim.rlim_max = lim.rlim_cur;
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);

    let ns = Netns::new("mfd");
    let id = std::process::id() % 100_000;
    let (a, b) = (format!("sg{id}mfa"), format!("sg{id}mfb"));
    ns.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])
        .expect("veth pair");
    ns.ip(&["link", "set", &a, "up"]).unwrap();
    ns.ip(&["link", "set", &b, "up"]).unwrap();
    let mut sg = Instance::new("mfd");
    let cfg = sg.write("sipguard.toml", CONFIG);
    sg.start(&ns, &[&a], &cfg, &["--xdp-mode", "generic"]);
    let pid = sg.pid();
    assert!(ns.run(scrape).unwrap().starts_with("HTTP/1.1 200 OK"));

    // A few descriptors more than the daemon holds (a scrape opens the pinned maps): accept
    // fails with EMFILE long before the connection cap.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = open + 24;
    let st = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("prlimit");
    assert!(st.success(), "prlimit failed");

    let (cpu, wall) = ns.run(|| {
        // Non-blocking connects: past the listen backlog the SYNs wait, and so would we.
        let conns: Vec<std::os::fd::OwnedFd> = (0..CONNECTIONS).map(|_| connect_nb()).collect();
        std::thread::sleep(Duration::from_millis(500));
        let c0 = cpu_seconds(pid);
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(4));
        let r = (cpu_seconds(pid) - c0, t0.elapsed().as_secs_f64());
        drop(conns);
        r
    });
    eprintln!(
        "daemon with {limit} descriptors, {CONNECTIONS} connections: {cpu:.2} s CPU in {wall:.2} s"
    );
    assert!(
        cpu < 0.5 * wall,
        "the daemon spins out of descriptors: {cpu:.2} s CPU in {wall:.2} s"
    );
    let log = sg.log_text();
    assert!(
        log.matches("metrics: accept failed").count() <= 3,
        "logged once per burst, not per failure:\n{log}"
    );

    // Closed: /metrics answers again (the backlog drains within the header timeout) ...
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match ns.run(scrape) {
            Ok(r) if r.starts_with("HTTP/1.1 200 OK") => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "/metrics does not answer after the connections closed: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
    // ... and SIGHUP reloads.
    let before = sg.log_text().matches("reloaded").count();
    sg.signal(libc::SIGHUP);
    sg.wait_log("reloaded", before + 1);
    sg.stop(libc::SIGTERM);
}
