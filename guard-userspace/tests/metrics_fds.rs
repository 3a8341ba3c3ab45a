//! The metrics server out of file descriptors: a child process (this test binary again, with
//! `RLIMIT_NOFILE` lowered before it starts) serves /metrics on a current-thread runtime, as the
//! daemon does; the parent opens far more connections than the child has descriptors. The child
//! must not spin on the failing `accept` (its CPU time stays a fraction of the wall time), must
//! keep its runtime ticking, and must answer /metrics again once the connections are gone.
//! No root needed.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sipguard::daemon::metrics::{Limits, serve_with};

const CHILD_ENV: &str = "SIPGUARD_METRICS_FD_CHILD";
/// Descriptors the child may have: fewer than the connections the parent opens, and fewer than
/// the connection cap, so `accept` fails with EMFILE.
const CHILD_NOFILE: u64 = 40;
const CONNECTIONS: usize = 300;

const BODY: &str = "# TYPE sipguard_up gauge\nsipguard_up 1\n# EOF\n";

/// The child: prints its port, then its runtime's tick count every 200 ms; serves until killed.
#[test]
#[ignore = "run by out_of_file_descriptors_the_server_backs_off_and_recovers"]
fn metrics_fd_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("port {}", l.local_addr().unwrap().port());
        let limits = Limits {
            header_read_timeout: Duration::from_secs(2),
            connection_lifetime: Duration::from_secs(4),
            ..Limits::default()
        };
        tokio::spawn(serve_with(l, limits, || Ok(BODY.to_string())));
        let mut ticks = 0u64;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            ticks += 1;
            println!("tick {ticks}");
        }
    });
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (in parentheses, which may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn out_of_file_descriptors_the_server_backs_off_and_recovers() {
    // The parent needs more descriptors than the connections it opens.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if (lim.rlim_max as usize) < CONNECTIONS + 64 {
        eprintln!("skipped: RLIMIT_NOFILE hard limit {} too low", lim.rlim_max);
        return;
    }
    lim.rlim_cur = lim.rlim_max;
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };

    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "metrics_fd_child", "--ignored", "--nocapture"])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    unsafe {
        cmd.pre_exec(|| {
            let l = libc::rlimit {
                rlim_cur: CHILD_NOFILE,
                rlim_max: CHILD_NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = Kill(cmd.spawn().unwrap());
    let pid = child.0.id();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let port: u16 = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("child port");
        if let Some(p) = line.strip_prefix("port ") {
            break p.parse().unwrap();
        }
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(get(addr).unwrap().ends_with(BODY));

    // Far more idle connections than the child has descriptors.
    let conns: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu0 = cpu_ticks(pid);
    let t0 = Instant::now();
    while rx.try_recv().is_ok() {}
    std::thread::sleep(Duration::from_secs(3));
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(pid) - cpu0) as f64 / hz;
    let ticks = rx.try_iter().filter(|l| l.starts_with("tick ")).count();
    eprintln!(
        "child cpu {cpu:.3} s over {wall:.2} s with {CONNECTIONS} connections; {ticks} ticks"
    );
    assert!(
        cpu < 0.5 * wall,
        "the server spins out of descriptors: {cpu:.2} s CPU in {wall:.2} s"
    );
    // The runtime goes on with its other work (ticks every 200 ms: ~15 in 3 s).
    assert!(
        ticks >= 7,
        "the runtime stalled: {ticks} ticks in {wall:.2} s"
    );

    // Once the connections are gone, /metrics answers again.
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match get(addr) {
            Ok(r) if r.ends_with(BODY) => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "/metrics does not answer after the connections closed: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}
