//! A fleet on one machine, for the fleet tests and the convergence benchmark: a management
//! namespace with a bridge (198.51.100.1/24) where a real etcd (Debian's etcd-server) and,
//! when asked, a real Prometheus listen; N router namespaces, each with a sipguard daemon
//! (`run --fleet`) reaching etcd over the bridge (198.51.100.10+i) and guarding a veth to a
//! PBX namespace of its own. Everything is removed on drop: processes (by the PIDs started
//! here), namespaces, pins and directories.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    harness::{Instance, Launch, sipguard_bin},
    netns::{Netns, VethPair},
};

pub const MGMT: &str = "198.51.100.1";
pub const ETCD_PORT: u16 = 2379;
pub const PROM_PORT: u16 = 9090;
pub const PREFIX: &str = "/sipguard/test";

/// The metrics only a fleet router exports.
pub const FLEET_METRICS: [&str; 3] = [
    "sipguard_config_revision",
    "sipguard_fleet_connected",
    "sipguard_fleet_last_watch_event_timestamp_seconds",
];

/// The management address of router `i`.
pub fn router_addr(i: usize) -> String {
    format!("198.51.100.{}", 10 + i)
}

/// `program ARGS` inside `ns` (network namespace only), stdin closed.
pub fn in_ns(ns: &Netns, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", ns.name))
        .arg("--")
        .arg(program)
        .stdin(Stdio::null());
    c
}

fn spawn_in(ns: &Netns, program: &str, args: &[&str], log: &Path) -> Child {
    let log = fs::File::create(log).expect("log file");
    in_ns(ns, program)
        .args(args)
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"))
}

/// Runs a command inside `ns` (network namespace only).
pub fn run_in(ns: &Netns, program: &str, args: &[&str]) -> Output {
    in_ns(ns, program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn stop(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// TLS material made with openssl for one run: a CA, etcd's server certificate (for
/// 198.51.100.1 and 127.0.0.1) and a client certificate.
pub struct Certs {
    pub ca: PathBuf,
    pub server: (PathBuf, PathBuf),
    pub client: (PathBuf, PathBuf),
}

impl Certs {
    pub fn make(dir: &Path) -> Self {
        let p = |n: &str| dir.join(n);
        let ssl = |args: &[&str]| {
            let o = Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl");
            assert!(
                o.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        let s = |x: &PathBuf| x.to_str().unwrap().to_string();
        let (ca_key, ca) = (p("ca.key"), p("ca.pem"));
        ssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=sipguard test CA",
            "-keyout",
            &s(&ca_key),
            "-out",
            &s(&ca),
        ]);
        let leaf = |name: &str, ext: &str| -> (PathBuf, PathBuf) {
            let (key, csr, pem, extf) = (
                p(&format!("{name}.key")),
                p(&format!("{name}.csr")),
                p(&format!("{name}.pem")),
                p(&format!("{name}.ext")),
            );
            fs::write(&extf, ext).unwrap();
            ssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &s(&key),
                "-out",
                &s(&csr),
            ]);
            ssl(&[
                "x509",
                "-req",
                "-in",
                &s(&csr),
                "-CA",
                &s(&ca),
                "-CAkey",
                &s(&ca_key),
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &s(&pem),
                "-extfile",
                &s(&extf),
            ]);
            (pem, key)
        };
        let server = leaf(
            "etcd",
            "subjectAltName=IP:198.51.100.1,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        let client = leaf("sipguard", "extendedKeyUsage=clientAuth\n");
        Self { ca, server, client }
    }
}

/// etcd in the management namespace.
pub struct Etcd {
    child: Option<Child>,
    pub data: PathBuf,
    pub log: PathBuf,
    pub tls: bool,
}

/// Prometheus in the management namespace, scraping every router.
pub struct Prometheus {
    child: Option<Child>,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

pub struct Router {
    pub pair: VethPair,
    pub sg: Instance,
}

pub struct Fleet {
    pub dir: PathBuf,
    pub mgmt: Netns,
    pub etcd: Etcd,
    pub certs: Option<Certs>,
    /// The fleet file of the routers and of `sipguard fleet` (without `node`: each router gets
    /// its own copy with it).
    pub fleet_file: PathBuf,
    pub routers: Vec<Router>,
    pub tag: String,
}

impl Fleet {
    /// The management namespace and etcd (TLS with client certificates if `tls`).
    pub fn new(tag: &str, tls: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("sgt-{}-{tag}-fleet", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mgmt = Netns::new(&format!("{tag}m"));
        mgmt.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
        mgmt.ip(&["addr", "add", &format!("{MGMT}/24"), "dev", "br0"])
            .unwrap();
        mgmt.ip(&["link", "set", "br0", "up"]).unwrap();
        let certs = tls.then(|| Certs::make(&dir));
        let scheme = if tls { "https" } else { "http" };
        let mut fleet_text = format!(
            "[fleet]\nendpoints = [\"{scheme}://{MGMT}:{ETCD_PORT}\"]\nprefix = \"{PREFIX}\"\nstatus_ttl = \"3s\"\ntimeout = \"2s\"\n"
        );
        if let Some(c) = &certs {
            fleet_text += &format!(
                "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                c.ca.display(),
                c.client.0.display(),
                c.client.1.display()
            );
        }
        let fleet_file = dir.join("fleet.toml");
        fs::write(&fleet_file, &fleet_text).unwrap();
        let etcd = Etcd {
            child: None,
            data: dir.join("etcd-data"),
            log: dir.join("etcd.log"),
            tls,
        };
        let mut f = Self {
            dir,
            mgmt,
            etcd,
            certs,
            fleet_file,
            routers: Vec::new(),
            tag: tag.into(),
        };
        f.start_etcd();
        f
    }

    /// The etcd endpoint as etcdctl wants it, with its TLS flags.
    fn etcdctl_args(&self) -> Vec<String> {
        let scheme = if self.etcd.tls { "https" } else { "http" };
        let mut a = vec![format!("--endpoints={scheme}://{MGMT}:{ETCD_PORT}")];
        if let Some(c) = &self.certs {
            a.push(format!("--cacert={}", c.ca.display()));
            a.push(format!("--cert={}", c.client.0.display()));
            a.push(format!("--key={}", c.client.1.display()));
        }
        a
    }

    /// etcdctl ARGS in the management namespace (ETCDCTL_API=3).
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let mut all = self.etcdctl_args();
        all.extend(args.iter().map(|s| s.to_string()));
        in_ns(&self.mgmt, "etcdctl")
            .args(&all)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl")
    }

    /// Starts etcd (again, on the same data) and waits until it answers.
    pub fn start_etcd(&mut self) {
        assert!(self.etcd.child.is_none(), "etcd runs already");
        let scheme = if self.etcd.tls { "https" } else { "http" };
        let client = format!("{scheme}://{MGMT}:{ETCD_PORT},{scheme}://127.0.0.1:{ETCD_PORT}");
        let mut args = vec![
            "--name".to_string(),
            "sgt".into(),
            "--data-dir".into(),
            self.etcd.data.display().to_string(),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            format!("{scheme}://{MGMT}:{ETCD_PORT}"),
            "--listen-peer-urls".into(),
            "http://127.0.0.1:2380".into(),
            "--initial-advertise-peer-urls".into(),
            "http://127.0.0.1:2380".into(),
            "--initial-cluster".into(),
            "sgt=http://127.0.0.1:2380".into(),
        ];
        if let Some(c) = &self.certs {
            args.extend([
                "--cert-file".into(),
                c.server.0.display().to_string(),
                "--key-file".into(),
                c.server.1.display().to_string(),
                "--trusted-ca-file".into(),
                c.ca.display().to_string(),
                "--client-cert-auth".into(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.etcd.child = Some(spawn_in(&self.mgmt, "etcd", &args, &self.etcd.log));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.etcdctl(&["endpoint", "health"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not come up in 30 s:\n{}",
                fs::read_to_string(&self.etcd.log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop_etcd(&mut self) {
        stop(&mut self.etcd.child);
    }

    /// Adds `n` routers, each with its daemon running `--fleet` (not waiting for a document).
    pub fn add_routers(&mut self, n: usize) {
        let start = self.routers.len();
        for i in start..start + n {
            let tag = format!("{}{i}", self.tag);
            let pair = VethPair::new(&tag);
            // The management link: one end on the bridge, the other in the router.
            let id = std::process::id() % 100_000;
            let outer = format!("sm{id}{tag}");
            assert!(outer.len() <= 15, "interface name too long: {outer}");
            crate::netns::ip(&[
                "link",
                "add",
                &outer,
                "netns",
                &self.mgmt.name,
                "type",
                "veth",
                "peer",
                "name",
                "mg0",
                "netns",
                &pair.rx.name,
            ])
            .expect("management veth");
            self.mgmt
                .ip(&["link", "set", &outer, "master", "br0", "up"])
                .unwrap();
            pair.rx
                .ip(&[
                    "addr",
                    "add",
                    &format!("{}/24", router_addr(i)),
                    "dev",
                    "mg0",
                ])
                .unwrap();
            pair.rx.ip(&["link", "set", "mg0", "up"]).unwrap();
            let sg = Instance::new(&format!("{tag}r"));
            self.routers.push(Router { pair, sg });
            self.start_router(i);
        }
    }

    /// The fleet file of router `i` (the shared one with its node name).
    pub fn router_fleet_file(&self, i: usize) -> PathBuf {
        let p = self.dir.join(format!("fleet-r{i}.toml"));
        let text = fs::read_to_string(&self.fleet_file).unwrap();
        fs::write(&p, format!("{text}node = \"router-{i:03}\"\n")).unwrap();
        p
    }

    /// Starts router `i`'s daemon (again).
    pub fn start_router(&mut self, i: usize) {
        let fleet = self.router_fleet_file(i);
        let local = self.dir.join("local.toml");
        // Enforced only until the fleet's document arrives: nothing blocked, metrics open.
        fs::write(&local, "[metrics]\nlisten = \"0.0.0.0:9960\"\n").unwrap();
        let r = &mut self.routers[i];
        let iface = r.pair.rx_if.clone();
        let fleet_arg = fleet.display().to_string();
        r.sg.launch(
            &r.pair.rx,
            &[&iface],
            Some(&local),
            &["--xdp-mode", "native", "--fleet", &fleet_arg],
            &Launch::default(),
        );
    }

    /// The revision router `i` has applied, from its state directory.
    pub fn applied(&self, i: usize) -> i64 {
        let p = self.routers[i].sg.state_dir.join("fleet.json");
        fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["revision"].as_i64())
            .unwrap_or(0)
    }

    /// Waits (bounded) until every router has applied `revision`; the time it took.
    pub fn converge(&self, revision: i64, limit: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let behind: Vec<usize> = (0..self.routers.len())
                .filter(|&i| self.applied(i) < revision)
                .collect();
            if behind.is_empty() {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < limit,
                "routers {behind:?} did not apply revision {revision} within {limit:?}:\n{}",
                self.routers[behind[0]].sg.log_text()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// `sipguard fleet ARGS` in the management namespace.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let o = in_ns(&self.mgmt, sipguard_bin())
            .arg("fleet")
            .arg("--fleet")
            .arg(&self.fleet_file)
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .expect("sipguard fleet");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// Writes `text` to a file and pushes it (not waiting); the new revision.
    pub fn push(&self, name: &str, text: &str) -> i64 {
        let p = self.dir.join(name);
        fs::write(&p, text).unwrap();
        let (ok, out, err) = self.cli(&["push", p.to_str().unwrap(), "--wait", "0s"]);
        assert!(ok, "fleet push {name}: {err}");
        out.split_whitespace()
            .nth(2)
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no revision in: {out}"))
    }

    /// Starts Prometheus in the management namespace, scraping every router each second,
    /// with contrib/prometheus/fleet.yml's recording rules.
    pub fn prometheus(&self) -> Prometheus {
        let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/prometheus");
        let targets: Vec<String> = (0..self.routers.len())
            .map(|i| {
                format!(
                    "    - targets: ['{}:9960']\n      labels: {{router: router-{i:03}}}\n",
                    router_addr(i)
                )
            })
            .collect();
        let cfg = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: sipguard\n    static_configs:\n{}",
            contrib.join("fleet.yml").display(),
            targets.concat()
        );
        let path = self.dir.join("prometheus.yml");
        fs::write(&path, cfg).unwrap();
        let child = spawn_in(
            &self.mgmt,
            "prometheus",
            &[
                &format!("--config.file={}", path.display()),
                &format!("--storage.tsdb.path={}", self.dir.join("tsdb").display()),
                &format!("--web.listen-address=127.0.0.1:{PROM_PORT}"),
            ],
            &self.dir.join("prometheus.log"),
        );
        Prometheus { child: Some(child) }
    }

    /// A PromQL instant query through Prometheus's HTTP API: the value of its one sample.
    pub fn query(&self, promql: &str) -> Option<f64> {
        let o = run_in(
            &self.mgmt,
            "curl",
            &[
                "-s",
                "--max-time",
                "5",
                &format!("http://127.0.0.1:{PROM_PORT}/api/v1/query"),
                "--data-urlencode",
                &format!("query={promql}"),
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        let r = v["data"]["result"].as_array()?;
        r.first()?["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Daemons first (Instance's drop), then etcd, then the namespaces and the directory.
        self.routers.clear();
        stop(&mut self.etcd.child);
        if std::env::var_os("SIPGUARD_KEEP_TEST_DIRS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
