//! Programming a mesh of 100 and 1,000 peers into one real VPP: `VppTunnel::reconcile` vs
//! the same objects through one `vppctl` process per command vs one `vppctl exec <file>`
//! batch, measured in the same run; prints the ratios.
//!
//! Per peer, 9 operations either way: IPIP tunnel (tagged, unnumbered to the uplink, IPv6
//! enabled), outbound + inbound AES-GCM-128 SA (ESN, anti-replay), tunnel protection, admin
//! up, route of the peer's pod CIDR. After every run the VPP state is dumped through the
//! binary API and compared with what the reconcile produced (same objects, same SA keys,
//! salts and flags), then removed before the next run. Ours also times a no-op reconcile and
//! the teardown (reconcile of an empty mesh).
//!
//! One `vppctl` per command for 1,000 peers is cut off after a time budget and extrapolated
//! linearly (the rest is programmed by a batch so the state check still covers it); the
//! output says so when that happens.
//!
//! Criterion times, per mesh size (group `vpp mesh <n> peers`), our reconcile, the no-op
//! reconcile, the teardown and the `vppctl exec` batch; one `vppctl` per command runs once
//! per size. The ratio lines after criterion's report come from a separate loop as before
//! (ours and the batch taking turns, medians).
//!
//! Run with `cargo bench -p benches --bench vpp` as root (needs a VPP tree: `SCRAMBLER_VPP_DIST`,
//! else the project's CI fixture; see `scrambler_testkit::dist`).

use benches::mesh::mesh;
use benches::run;
use criterion::{Criterion, SamplingMode};
use ipnet::IpNet;
use scrambler_core::{ClusterSecret, Mesh, Netns, Tunnel};
use scrambler_testkit::vpp::VppInstance;
use scrambler_vpp::tunnel::{owned_sa, sa_id, tunnel_instance, tunnel_peer, Direction};
use scrambler_vpp::VppTunnel;
use scrambler_vpp_api::api::types::{IfStatusFlags, IpTable, IpsecSadEntryV4};
use scrambler_vpp_api::api::{ip, ipip, ipsec};
use scrambler_vpp_api::VppClient;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// VPP's name of the uplink (af_packet on the veth `ul0`).
const UPLINK: &str = "host-ul0";
/// Wall-clock budget for one `vppctl` per command at one mesh size before extrapolating.
const PER_COMMAND_BUDGET: Duration = Duration::from_secs(60);

/// The mesh as `vppctl` command lines, peer by peer (9 per peer).
fn vppctl_commands(m: &Mesh, secret: &ClusterSecret) -> Vec<Vec<String>> {
    let me = m.local.underlay[0];
    let sa_flags = format!(
        "{}use-anti-replay anti-replay-size {}",
        if scrambler_core::esp::ESN {
            "use-esn "
        } else {
            ""
        },
        scrambler_core::esp::REPLAY_WINDOW
    );
    m.peers
        .iter()
        .map(|p| {
            let tun = format!("ipip{}", tunnel_instance(p.id));
            let sa = |id: u32, key: scrambler_core::keys::SaKey, inbound: bool| {
                format!(
                    "ipsec sa add {id} spi {} esp crypto-alg aes-gcm-128 crypto-key {} salt 0x{} {sa_flags}{}",
                    key.spi,
                    hex::encode(&key.key),
                    hex::encode(key.salt),
                    if inbound { " inbound" } else { "" }
                )
            };
            let tx = m.keys.tx;
            let out_id = sa_id(Direction::Outbound, p.id, tx);
            let mut v = vec![
                format!(
                    "create ipip tunnel src {me} dst {} instance {}",
                    p.underlay[0],
                    tunnel_instance(p.id)
                ),
                format!("set interface tag {tun} scrambler:peer={}", p.name),
                format!("set interface unnumbered {tun} use {UPLINK}"),
                format!("enable ip6 interface {tun}"),
                sa(out_id, secret.sa(m.local.incarnation(), p.incarnation(), tx), false),
            ];
            let mut sa_in = String::new();
            for g in &m.keys.rx {
                let id = sa_id(Direction::Inbound, p.id, *g);
                v.push(sa(id, secret.sa(p.incarnation(), m.local.incarnation(), *g), true));
                let _ = write!(sa_in, " sa-in {id}");
            }
            v.push(format!("ipsec tunnel protect {tun}{sa_in} sa-out {out_id}"));
            v.push(format!("set interface state {tun} up"));
            for c in &p.pod_cidrs {
                v.push(format!("ip route add {c} via {tun}"));
            }
            v
        })
        .collect()
}

/// Deleting what [`vppctl_commands`] made, peer by peer; `sw` maps tunnel instances to
/// interface indexes (`delete ipip tunnel` takes only those).
fn vppctl_teardown(m: &Mesh, sw: &HashMap<u32, u32>) -> Vec<Vec<String>> {
    m.peers
        .iter()
        .map(|p| {
            let inst = tunnel_instance(p.id);
            let tun = format!("ipip{inst}");
            let mut v: Vec<String> = p
                .pod_cidrs
                .iter()
                .map(|c| format!("ip route del {c} via {tun}"))
                .collect();
            v.push(format!("set interface state {tun} down"));
            v.push(format!("ipsec tunnel protect {tun} del"));
            v.push(format!(
                "delete ipip tunnel sw_if_index {}",
                sw.get(&inst).expect("tunnel of peer")
            ));
            v.push(format!(
                "ipsec sa del {}",
                sa_id(Direction::Outbound, p.id, m.keys.tx)
            ));
            for g in &m.keys.rx {
                v.push(format!(
                    "ipsec sa del {}",
                    sa_id(Direction::Inbound, p.id, *g)
                ));
            }
            v
        })
        .collect()
}

/// `ipip<n>`, what `create ipip tunnel` prints.
fn is_tunnel_name(s: &str) -> bool {
    s.strip_prefix("ipip")
        .is_some_and(|n| n.parse::<u32>().is_ok())
}

/// `vppctl` exits 0 also when a command fails; success prints nothing but the name of a
/// created tunnel.
fn check_cli_output(what: &str, out: &str) {
    let bad: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !is_tunnel_name(l))
        .collect();
    assert!(bad.is_empty(), "vppctl {what}: {}", bad.join("\n"));
}

/// Writes the commands for `vppctl exec` (0600: they hold SA keys).
fn write_script(path: &Path, lines: &[Vec<String>]) {
    let mut text = lines
        .iter()
        .flatten()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    text.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("create script");
    std::io::Write::write_all(&mut f, text.as_bytes()).expect("write script");
}

/// What VPP holds of the mesh, with interface indexes replaced by tunnel instances so runs
/// compare.
#[derive(Debug, PartialEq)]
struct State {
    /// (instance, src, dst)
    tunnels: Vec<(u32, Option<IpAddr>, Option<IpAddr>)>,
    /// (instance, admin up, tag, unnumbered to the uplink, has an IPv6 link-local)
    ifs: Vec<(u32, bool, String, bool, bool)>,
    sas: Vec<IpsecSadEntryV4>,
    /// (instance, sa_out, sa_in)
    protects: Vec<(u32, u32, Vec<u32>)>,
    /// (prefix, instances of its paths)
    routes: Vec<(IpNet, Vec<u32>)>,
    /// Routes in the pods' range whatever they point at (a route added by `vppctl` is not
    /// removed by an API delete: another FIB source).
    pod_routes: usize,
}

/// The pods' range of [`node`].
fn pod_range() -> IpNet {
    "10.96.0.0/11".parse().expect("pod range")
}

/// Tunnel instance -> sw_if_index of our tunnels.
async fn tunnel_indexes(c: &VppClient) -> HashMap<u32, u32> {
    c.dump(&ipip::IpipTunnelDump {
        sw_if_index: u32::MAX,
    })
    .await
    .expect("dump tunnels")
    .into_iter()
    .filter(|d| tunnel_peer(d.tunnel.instance).is_some())
    .map(|d| (d.tunnel.instance, d.tunnel.sw_if_index))
    .collect()
}

impl State {
    async fn read(c: &VppClient) -> State {
        let mut inst_of: HashMap<u32, u32> = HashMap::new();
        let mut tunnels = Vec::new();
        for d in c
            .dump(&ipip::IpipTunnelDump {
                sw_if_index: u32::MAX,
            })
            .await
            .expect("dump tunnels")
        {
            let t = d.tunnel;
            if tunnel_peer(t.instance).is_some() {
                inst_of.insert(t.sw_if_index, t.instance);
                tunnels.push((t.instance, t.src.to_ip(), t.dst.to_ip()));
            }
        }
        tunnels.sort();
        let all = c.interfaces().await.expect("dump interfaces");
        let uplink = all
            .iter()
            .find(|i| i.interface_name == UPLINK)
            .map(|i| i.sw_if_index)
            .expect("uplink");
        let unnumbered: HashMap<u32, u32> = c
            .dump(&ip::IpUnnumberedDump::default())
            .await
            .expect("dump unnumbered")
            .into_iter()
            .map(|d| (d.sw_if_index, d.ip_sw_if_index))
            .collect();
        let mut ifs = Vec::new();
        for i in &all {
            if let Some(inst) = inst_of.get(&i.sw_if_index) {
                let ll = c
                    .request_unchecked(&ip::SwInterfaceIp6GetLinkLocalAddress {
                        sw_if_index: i.sw_if_index,
                    })
                    .await
                    .expect("get link-local");
                ifs.push((
                    *inst,
                    i.flags.contains(IfStatusFlags::IF_STATUS_API_FLAG_ADMIN_UP),
                    i.tag.clone(),
                    unnumbered.get(&i.sw_if_index) == Some(&uplink),
                    ll.retval == 0 && ll.ip.0 != [0; 16],
                ));
            }
        }
        ifs.sort();
        let mut sas: Vec<IpsecSadEntryV4> = c
            .dump(&ipsec::IpsecSaV5Dump { sa_id: u32::MAX })
            .await
            .expect("dump SAs")
            .into_iter()
            .map(|d| d.entry)
            .filter(|e| owned_sa(e.sad_id))
            .collect();
        sas.sort_by_key(|e| e.sad_id);
        let inst = |sw: u32| inst_of.get(&sw).copied().unwrap_or(u32::MAX);
        let mut protects: Vec<(u32, u32, Vec<u32>)> = c
            .dump(&ipsec::IpsecTunnelProtectDump {
                sw_if_index: u32::MAX,
            })
            .await
            .expect("dump protections")
            .into_iter()
            .filter(|d| inst_of.contains_key(&d.tun.sw_if_index))
            .map(|d| (inst(d.tun.sw_if_index), d.tun.sa_out, d.tun.sa_in))
            .collect();
        protects.sort();
        let mut routes = Vec::new();
        let mut pod_routes = 0;
        for is_ip6 in [false, true] {
            for r in c
                .dump(&ip::IpRouteDump {
                    table: IpTable {
                        table_id: 0,
                        is_ip6,
                        name: String::new(),
                    },
                })
                .await
                .expect("dump routes")
            {
                let prefix = r.route.prefix.to_ipnet().expect("route prefix");
                if pod_range().contains(&prefix) {
                    pod_routes += 1;
                }
                let via: Vec<u32> = r.route.paths.iter().map(|p| p.sw_if_index).collect();
                if via.iter().any(|s| inst_of.contains_key(s)) {
                    routes.push((prefix, via.into_iter().map(inst).collect()));
                }
            }
        }
        routes.sort();
        State {
            tunnels,
            ifs,
            sas,
            protects,
            routes,
            pod_routes,
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} tunnels ({} up), {} SAs, {} protections, {} routes ({} in the pod range)",
            self.tunnels.len(),
            self.ifs.iter().filter(|i| i.1).count(),
            self.sas.len(),
            self.protects.len(),
            self.routes.len(),
            self.pod_routes
        )
    }

    fn is_empty(&self) -> bool {
        self.tunnels.is_empty()
            && self.sas.is_empty()
            && self.routes.is_empty()
            && self.pod_routes == 0
    }

    /// Every peer complete: tunnel up, tagged, unnumbered, IPv6 on, 2 SAs, protected, routed.
    fn assert_mesh(&self, peers: usize) {
        assert_eq!(self.tunnels.len(), peers, "{}", self.summary());
        assert_eq!(self.sas.len(), 2 * peers, "{}", self.summary());
        assert_eq!(self.protects.len(), peers, "{}", self.summary());
        assert_eq!(self.routes.len(), peers, "{}", self.summary());
        assert_eq!(self.pod_routes, peers, "{}", self.summary());
        assert!(
            self.ifs.len() == peers
                && self.ifs.iter().all(|(_, up, tag, unnum, v6)| *up
                    && tag.starts_with("scrambler:peer=")
                    && *unnum
                    && *v6),
            "{}",
            self.summary()
        );
    }
}

/// A VPP with an af_packet uplink on a veth in its namespace, address 2001:db8::1/64.
async fn start_vpp() -> VppInstance {
    let vpp = VppInstance::start("bench", 1).await;
    vpp.netns
        .ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul0p"]);
    vpp.netns.ip(&["link", "set", "ul0", "up"]);
    vpp.netns.ip(&["link", "set", "ul0p", "up"]);
    vpp.host_interface("ul0", [2, 0xfe, 0, 0, 0xbe, 1], "2001:db8::1/64")
        .await;
    vpp
}

/// Times of one mesh size.
struct Figures {
    ours: Duration,
    noop: Duration,
    teardown: Duration,
    exec: Option<Duration>,
    exec_teardown: Option<Duration>,
    per_command: Duration,
    /// Some(peers actually timed) when per-command was extrapolated.
    per_command_sampled: Option<usize>,
}

struct Bench {
    vpp: VppInstance,
    dp: VppTunnel,
    ns: Netns,
    secret: ClusterSecret,
    exec_works: bool,
}

impl Bench {
    async fn state(&self) -> State {
        let c = self.client().await;
        let s = State::read(&c).await;
        let _ = c.close().await;
        s
    }

    async fn client(&self) -> VppClient {
        match VppClient::connect(self.vpp.api_sock()).await {
            Ok(c) => c,
            Err(e) => panic!("VPP gone ({e}): {}", self.vpp.logs()),
        }
    }

    fn assert_empty(&self, s: &State) {
        assert!(s.is_empty(), "left behind: {}", s.summary());
    }

    /// Runs command lines through one `vppctl exec` (or, where that does not work, one
    /// `vppctl` each) and returns how long that took.
    fn vppctl_batch(&self, name: &str, lines: &[Vec<String>]) -> Duration {
        if !self.exec_works {
            return self.vppctl_each(lines, Duration::MAX).0;
        }
        let script = self.vpp.run_dir.join(name);
        write_script(&script, lines);
        let arg = script.display().to_string();
        let t = Instant::now();
        let out = self.vpp.vppctl(&["exec", &arg]);
        let d = t.elapsed();
        check_cli_output(&format!("exec {name}"), &out);
        let _ = std::fs::remove_file(&script);
        d
    }

    /// One `vppctl` per command, peer by peer, until `budget` is spent; returns the time and
    /// how many peers were done.
    fn vppctl_each(&self, lines: &[Vec<String>], budget: Duration) -> (Duration, usize) {
        let start = Instant::now();
        let mut done = 0;
        for cmds in lines {
            for line in cmds {
                let args: Vec<&str> = line.split(' ').collect();
                let out = self.vpp.vppctl(&args);
                check_cli_output(line, &out);
            }
            done += 1;
            if start.elapsed() > budget {
                break;
            }
        }
        (start.elapsed(), done)
    }

    /// Deletes what the `vppctl` commands made, with `vppctl` (routes added through the CLI
    /// are only deleted through the CLI); returns the time of that batch.
    async fn vppctl_clean(&self, m: &Mesh) -> Duration {
        let c = self.client().await;
        let sw = tunnel_indexes(&c).await;
        let _ = c.close().await;
        let d = self.vppctl_batch("teardown.cli", &vppctl_teardown(m, &sw));
        self.assert_empty(&self.state().await);
        d
    }

    /// ours, one run: from empty, no-op, teardown; returns those times and the state of
    /// the full mesh.
    async fn ours_once(&self, m: &Mesh) -> (Duration, Duration, Duration, State) {
        let n = m.peers.len();
        let empty = Mesh {
            peers: vec![],
            ..m.clone()
        };
        // The node's cluster guard (a drop route per cluster CIDR) is there before any
        // peer, as on a running node, and stays through the teardown: untimed, made once.
        self.dp
            .reconcile(&self.ns, &empty, &self.secret)
            .await
            .expect("guard reconcile");
        let t = Instant::now();
        let r = self
            .dp
            .reconcile(&self.ns, m, &self.secret)
            .await
            .expect("reconcile");
        let add = t.elapsed();
        // per peer tunnel, 2 SAs, protection, route (the guard is already there)
        assert_eq!(r.added, 5 * n, "{r:?}");
        let state = self.state().await;
        let t = Instant::now();
        let r = self
            .dp
            .reconcile(&self.ns, m, &self.secret)
            .await
            .expect("no-op reconcile");
        let noop = t.elapsed();
        assert!(r.is_noop(), "{r:?}");
        let t = Instant::now();
        let r = self
            .dp
            .reconcile(&self.ns, &empty, &self.secret)
            .await
            .expect("teardown reconcile");
        let down = t.elapsed();
        // route, tunnel, 2 SAs
        assert_eq!(r.removed, 4 * n, "{r:?}");
        self.assert_empty(&self.state().await);
        (add, noop, down, state)
    }

    /// The same commands through one `vppctl exec <file>`, one run; returns the times of
    /// programming and of the teardown batch.
    async fn exec_once(&self, m: &Mesh, want: &State) -> (Duration, Duration) {
        let add = self.vppctl_batch("mesh.cli", &vppctl_commands(m, &self.secret));
        let s = self.state().await;
        assert!(
            &s == want,
            "vppctl exec made different state: {}",
            s.summary()
        );
        (add, self.vppctl_clean(m).await)
    }

    /// One `vppctl` per command; after `budget` the rest goes through a batch (untimed) and
    /// the time is extrapolated from the peers done. Returns (time, Some(peers timed) if
    /// extrapolated).
    async fn per_command(
        &self,
        m: &Mesh,
        want: &State,
        budget: Duration,
    ) -> (Duration, Option<usize>) {
        let lines = vppctl_commands(m, &self.secret);
        let (elapsed, done) = self.vppctl_each(&lines, budget);
        let result = if done < lines.len() {
            self.vppctl_batch("rest.cli", &lines[done..]);
            (
                elapsed.mul_f64(lines.len() as f64 / done as f64),
                Some(done),
            )
        } else {
            (elapsed, None)
        };
        let s = self.state().await;
        assert!(
            &s == want,
            "vppctl per command made different state: {}",
            s.summary()
        );
        self.vppctl_clean(m).await;
        result
    }

    /// Does `vppctl exec` run a file on this VPP? (One peer through a file, checked.)
    async fn probe_exec(&mut self) {
        let m = mesh(1);
        let script = self.vpp.run_dir.join("probe.cli");
        write_script(&script, &vppctl_commands(&m, &self.secret));
        let out = self.vpp.vppctl(&["exec", &script.display().to_string()]);
        let _ = std::fs::remove_file(&script);
        let s = self.state().await;
        self.exec_works = out
            .lines()
            .all(|l| l.trim().is_empty() || is_tunnel_name(l.trim()))
            && s.tunnels.len() == 1
            && s.sas.len() == 2
            && s.routes.len() == 1;
        if !self.exec_works {
            println!(
                "vppctl exec does not work with this VPP ({}): batch baseline dropped",
                out.trim()
            );
        }
        // whatever got made, through the CLI again
        let c = self.client().await;
        let sw = tunnel_indexes(&c).await;
        let _ = c.close().await;
        for line in vppctl_teardown(&m, &sw).concat() {
            let args: Vec<&str> = line.split(' ').collect();
            self.vpp.vppctl(&args);
        }
        self.dp.remove(&self.ns).await.expect("remove");
        self.assert_empty(&self.state().await);
    }

    /// Median time of one request/reply on the API socket.
    async fn round_trip(&self) -> Duration {
        let c = self.client().await;
        let mut v = Vec::with_capacity(1000);
        for _ in 0..1000 {
            let t = Instant::now();
            c.control_ping().await.expect("control_ping");
            v.push(t.elapsed());
        }
        let _ = c.close().await;
        median(v)
    }

    /// ours and `vppctl exec` take turns (the machine's load drifts), then one `vppctl` per
    /// command.
    async fn run(&self, n: u32, reps: usize, budget: Duration) -> Figures {
        let m = mesh(n);
        let (mut ours, mut noop, mut teardown) = (vec![], vec![], vec![]);
        let (mut exec, mut exec_teardown) = (vec![], vec![]);
        let mut want: Option<State> = None;
        for _ in 0..reps {
            let (a, o, d, s) = self.ours_once(&m).await;
            ours.push(a);
            noop.push(o);
            teardown.push(d);
            let want = match &want {
                Some(w) => {
                    assert!(&s == w, "reconcile runs differ: {}", s.summary());
                    w
                }
                None => {
                    s.assert_mesh(m.peers.len());
                    want.insert(s)
                }
            };
            if self.exec_works {
                let (a, d) = self.exec_once(&m, want).await;
                exec.push(a);
                exec_teardown.push(d);
            }
        }
        let want = want.expect("at least one run");
        let (per_command, per_command_sampled) = self.per_command(&m, &want, budget).await;
        Figures {
            ours: median(ours),
            noop: median(noop),
            teardown: median(teardown),
            exec: (!exec.is_empty()).then(|| median(exec)),
            exec_teardown: (!exec_teardown.is_empty()).then(|| median(exec_teardown)),
            per_command,
            per_command_sampled,
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Criterion's group of mesh size `n` (flat sampling, 10 samples: one sample is one
/// whole mesh): our reconcile from empty, the no-op reconcile, the teardown (each timed
/// alone inside one full cycle that checks the state), and the same mesh through one
/// `vppctl exec` batch. One `vppctl` per command is too slow to sample: it runs once, in
/// the ratio lines after criterion's report.
fn bench(c: &mut Criterion, rt: &tokio::runtime::Runtime, b: &Bench, n: u32) {
    let m = mesh(n);
    let mut g = c.benchmark_group(format!("vpp mesh {n} peers"));
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(if n >= 1000 { 30 } else { 3 }));
    let cycles = |iters: u64, pick: fn(&(Duration, Duration, Duration, State)) -> Duration| {
        (0..iters)
            .map(|_| pick(&rt.block_on(b.ours_once(&m))))
            .sum::<Duration>()
    };
    g.bench_function("reconcile", |bn| bn.iter_custom(|i| cycles(i, |r| r.0)));
    g.bench_function("no-op reconcile", |bn| {
        bn.iter_custom(|i| cycles(i, |r| r.1))
    });
    g.bench_function("teardown (reconcile to empty)", |bn| {
        bn.iter_custom(|i| cycles(i, |r| r.2))
    });
    if b.exec_works {
        // the state a full reconcile makes, which every batch must make too
        let (_, _, _, want) = rt.block_on(b.ours_once(&m));
        g.bench_function("vppctl exec", |bn| {
            bn.iter_custom(|iters| {
                (0..iters)
                    .map(|_| rt.block_on(b.exec_once(&m, &want)).0)
                    .sum()
            })
        });
    }
    g.finish();
}

fn main() {
    let quick = run::quick();
    let sizes = run::mesh_sizes();
    let rt = run::runtime();
    let b = rt.block_on(async {
        let vpp = start_vpp().await;
        let dp = VppTunnel::new(vpp.api_sock());
        let ns = vpp.netns.netns();
        let mut b = Bench {
            vpp,
            dp,
            ns,
            secret: ClusterSecret::from_bytes(vec![7; 32]).expect("secret"),
            exec_works: false,
        };
        b.probe_exec().await;
        b
    });
    let mut c = Criterion::default().configure_from_args();
    for &n in sizes {
        bench(&mut c, &rt, &b, n);
    }
    c.final_summary();
    rt.block_on(async {
        let reps = if quick { 1 } else { 5 };
        let rtt = b.round_trip().await;
        println!(
            "VPP mesh programming into one VPP, 9 operations per peer (ipip tunnel + tag/unnumbered/ip6, \
             2 SAs, protect, up, route); medians of {} runs, vppctl per command: 1 run",
            reps
        );
        println!(
            "ratio = baseline time / our time (> 1: ours is faster); one API round trip (control_ping): median {:.0} µs",
            rtt.as_secs_f64() * 1e6
        );
        for &n in sizes {
            let f = b.run(n, reps, PER_COMMAND_BUDGET).await;
            let ratio = |d: Duration, ours: Duration| d.as_secs_f64() / ours.as_secs_f64();
            let sampled = match f.per_command_sampled {
                Some(k) => format!(" [EXTRAPOLATED from the first {k} peers]"),
                None => String::new(),
            };
            let exec = match f.exec {
                Some(e) => format!("{:>8.1} ms (ratio {:>5.2})", ms(e), ratio(e, f.ours)),
                None => "n/a (exec does not work)".into(),
            };
            println!(
                "peers {n:>5} program : ours {:>8.1} ms | vppctl exec {exec} | vppctl per command {:>9.1} ms (ratio {:>5.1}){sampled}",
                ms(f.ours),
                ms(f.per_command),
                ratio(f.per_command, f.ours),
            );
            let exec_down = match f.exec_teardown {
                Some(e) => format!("{:>8.1} ms (ratio {:>5.2})", ms(e), ratio(e, f.teardown)),
                None => "n/a".into(),
            };
            println!(
                "            teardown: ours {:>8.1} ms | vppctl exec {exec_down} | no-op reconcile (ours) {:.1} ms",
                ms(f.teardown),
                ms(f.noop),
            );
        }
    });
}
