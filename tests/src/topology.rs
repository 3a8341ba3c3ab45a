//! The end-to-end topology: a hacked PBX, an XDP-guarded router and a carrier, each in a
//! network namespace, joined by two veth pairs, with IPv4 and IPv6 documentation addresses.
//!
//! ```text
//!  pbx                         router                          carrier
//!  192.0.2.10  ---veth---  192.0.2.1 | 203.0.113.1  ---veth---  203.0.113.10
//!  2001:db8:1::10          2001:db8:1::1 | 2001:db8:2::1        2001:db8:2::10
//!                          ^ sipguard (native XDP) on the PBX-facing veth
//! ```
//!
//! Dropping the topology deletes the namespaces, which deletes the veths.

use std::process::Command;

use crate::netns::{Netns, ip};

pub const PBX4: &str = "192.0.2.10";
pub const PBX6: &str = "2001:db8:1::10";
pub const CARRIER4: &str = "203.0.113.10";
pub const CARRIER6: &str = "2001:db8:2::10";
/// The second PBX ([`SecondPbx`]): another customer behind another router port.
pub const PBX2_4: &str = "198.51.100.10";

pub struct Topology {
    pub pbx: Netns,
    pub router: Netns,
    pub carrier: Netns,
    /// The router's PBX-facing interface, where sipguard attaches.
    pub guarded_if: String,
}

impl Topology {
    pub fn new(tag: &str) -> Self {
        let pbx = Netns::new(&format!("{tag}-pbx"));
        let router = Netns::new(&format!("{tag}-rtr"));
        let carrier = Netns::new(&format!("{tag}-car"));
        let id = std::process::id() % 100_000;
        let (pbx_if, rtr_pbx) = (format!("sg{id}{tag}p"), format!("sg{id}{tag}g"));
        let (rtr_car, car_if) = (format!("sg{id}{tag}o"), format!("sg{id}{tag}c"));
        assert!(rtr_pbx.len() <= 15, "interface name too long: {rtr_pbx}");
        for (a, ans, b, bns) in [
            (&pbx_if, &pbx, &rtr_pbx, &router),
            (&rtr_car, &router, &car_if, &carrier),
        ] {
            ip(&[
                "link", "add", a, "netns", &ans.name, "type", "veth", "peer", "name", b, "netns",
                &bns.name,
            ])
            .expect("create veth pair");
        }
        let addrs = [
            (&pbx, &pbx_if, "192.0.2.10/24", "2001:db8:1::10/64"),
            (&router, &rtr_pbx, "192.0.2.1/24", "2001:db8:1::1/64"),
            (&router, &rtr_car, "203.0.113.1/24", "2001:db8:2::1/64"),
            (&carrier, &car_if, "203.0.113.10/24", "2001:db8:2::10/64"),
        ];
        for (ns, dev, a4, a6) in addrs {
            ns.ip(&["addr", "add", a4, "dev", dev])
                .expect("IPv4 address");
            ns.ip(&["addr", "add", a6, "dev", dev, "nodad"])
                .expect("IPv6 address");
            ns.ip(&["link", "set", dev, "up"]).expect("link up");
        }
        pbx.ip(&["route", "add", "default", "via", "192.0.2.1"])
            .expect("pbx route");
        pbx.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"])
            .expect("pbx route v6");
        carrier
            .ip(&["route", "add", "default", "via", "203.0.113.1"])
            .expect("carrier route");
        carrier
            .ip(&["-6", "route", "add", "default", "via", "2001:db8:2::1"])
            .expect("carrier route v6");
        for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            let st = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", router.name))
                .args(["--", "sysctl", "-qw", key])
                .status()
                .expect("sysctl");
            assert!(st.success(), "sysctl {key} in the router namespace");
        }
        Self {
            pbx,
            router,
            carrier,
            guarded_if: rtr_pbx,
        }
    }
}

/// A second PBX namespace on a second router port (198.51.100.0/24), for tests with two
/// customers. Dropping it removes its namespace (and so its veth pair).
pub struct SecondPbx {
    pub pbx: Netns,
    /// The router's port facing it (guard it too).
    pub guarded_if: String,
}

impl Topology {
    /// Adds a second PBX to this topology.
    pub fn second_pbx(&self, tag: &str) -> SecondPbx {
        let pbx = Netns::new(&format!("{tag}-pb2"));
        let id = std::process::id() % 100_000;
        let (pbx_if, rtr_if) = (format!("sg{id}{tag}q"), format!("sg{id}{tag}h"));
        ip(&[
            "link",
            "add",
            &pbx_if,
            "netns",
            &pbx.name,
            "type",
            "veth",
            "peer",
            "name",
            &rtr_if,
            "netns",
            &self.router.name,
        ])
        .expect("create veth pair");
        pbx.ip(&["addr", "add", "198.51.100.10/24", "dev", &pbx_if])
            .expect("IPv4 address");
        self.router
            .ip(&["addr", "add", "198.51.100.1/24", "dev", &rtr_if])
            .expect("IPv4 address");
        pbx.ip(&["link", "set", &pbx_if, "up"]).expect("link up");
        self.router
            .ip(&["link", "set", &rtr_if, "up"])
            .expect("link up");
        pbx.ip(&["route", "add", "default", "via", "198.51.100.1"])
            .expect("pbx route");
        SecondPbx {
            pbx,
            guarded_if: rtr_if,
        }
    }
}
