//! Fuzzing of what scrambler-vpp-api reads from VPP: API messages (every generated message type
//! decodes every input, cleanly or into a message whose encoding is stable) and the stats
//! segment (a synthetic segment, mutated, read through the public client). Corpus:
//! `fuzz/corpus/<target>/`: reply frames captured from a real VPP ([`capture_vpp_corpus`])
//! and synthetic segments ([`write_stats_corpus`]); `SCRAMBLER_FUZZ_CASES` runs longer.

use scrambler_fuzz::{Shape, Target};
use scrambler_testkit::vpp::VppInstance;
use scrambler_vpp_api::api::{self, interface, ip, ipip, ipsec, memclnt, types};
use scrambler_vpp_api::message::decode_message;
use scrambler_vpp_api::stats::StatsClient;
use scrambler_vpp_api::testing::stats_segment::SyntheticSegment;
use scrambler_vpp_api::transport::{read_frame, write_frame};
use scrambler_vpp_api::Message;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const CRATE: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn fuzz_vpp_messages() {
    let mut target = Target::new(CRATE, "vpp_message", Shape::Bytes, 1500);
    for c in api::CODECS {
        target = target.seed(c.name_crc, (c.default_frame)());
    }
    let decoded = std::sync::atomic::AtomicUsize::new(0);
    let r = target
        .dictionary([
            &[0u8, 0, 0, 0][..],
            &[0xff, 0xff, 0xff, 0xff],
            &[0, 0, 0, 1],
            &[0, 0, 0x10, 0],
        ])
        .run(|frame| {
            for c in api::CODECS {
                if (c.round_trip)(frame).is_ok() {
                    decoded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    println!(
        "vpp_message: {} decodes of {} frames by {} message types succeeded",
        decoded.into_inner(),
        r.total(),
        api::CODECS.len()
    );
    assert!(r.generated > 0 && r.corpus > api::CODECS.len(), "{r:?}");
}

/// Every entry of a mapped segment, read every way the client offers; true when some
/// entry's value was read.
fn read_everything(stats: &StatsClient) -> bool {
    let Ok(names) = stats.names() else {
        return false;
    };
    let mut wanted: Vec<&str> = names.iter().map(String::as_str).collect();
    wanted.extend(["/sys/heartbeat", "/net/ipsec/sa", "/no/such"]);
    let read = stats
        .read_present(&wanted)
        .is_ok_and(|v| v.iter().any(Option::is_some));
    let _ = stats.read_many(&wanted);
    for name in &wanted {
        if let Ok(v) = stats.read(name) {
            let _ = (v.simple_sum(usize::MAX), v.combined_sum(1));
        }
        let _ = stats.simple(name, 2);
        let _ = stats.combined(name, 0);
    }
    read
}

#[test]
fn fuzz_stats_segment() {
    let scratch = scrambler_fuzz::scratch_dir();
    let path = scratch.path().join("segment");
    let sample = SyntheticSegment::sample();
    // pointers into the segment and entry types, for mutations to plant
    let mut tokens: Vec<Vec<u8>> = (0..sample.words.len() as u64 + 2)
        .map(|i| (sample.base + i * 8).to_ne_bytes().to_vec())
        .collect();
    tokens.extend((1u32..=7).map(|t| t.to_ne_bytes().to_vec()));
    let read = std::sync::atomic::AtomicUsize::new(0);
    let r = Target::new(CRATE, "stats_segment", Shape::Layout, 3000)
        .dictionary(tokens)
        .run(|bytes| {
            // a segment left "in progress" is only ever Busy, after a thousand retries with
            // sleeps: stats.rs's own tests cover that; here the reads must get through
            let mut bytes = bytes.to_vec();
            if let Some(in_progress) = bytes.get_mut(24..32) {
                in_progress.fill(0);
            }
            std::fs::write(&path, &bytes).expect("write segment");
            let fd = OwnedFd::from(std::fs::File::open(&path).expect("open segment"));
            if let Ok(stats) = StatsClient::from_segment_fd(fd) {
                if read_everything(&stats) {
                    read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    let read = read.into_inner();
    println!("stats_segment: values read from {read} segments");
    assert!(
        r.generated > 0 && read > r.total() / 10,
        "{r:?}, {read} read"
    );
}

/// Writes the synthetic segments of the `stats_segment` corpus.
#[test]
#[ignore = "regenerates fuzz/corpus/stats_segment; run with --ignored"]
fn write_stats_corpus() {
    let dir = Path::new(CRATE).join("fuzz/corpus/stats_segment");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let sample = SyntheticSegment::sample();
    std::fs::write(dir.join("every-entry-kind"), sample.to_bytes()).expect("write");
    let mut empty = SyntheticSegment::new(0x7f00_0000_0000);
    empty.set_directory(0, &[]);
    std::fs::write(dir.join("empty-directory"), empty.to_bytes()).expect("write");
    let mut many = SyntheticSegment::new(0x1000);
    let threads: Vec<u64> = (0..4).map(|t| many.vector(3, &[t, t + 1, t + 2])).collect();
    let counters = many.vector(4, &threads);
    let mut dir_words = SyntheticSegment::entry(2, counters, "/err/ipsec4-esp-encrypt/no error");
    dir_words.extend(SyntheticSegment::entry(6, 0, "/link/to/entry0"));
    many.set_directory(2, &dir_words);
    std::fs::write(dir.join("four-threads-and-symlink"), many.to_bytes()).expect("write");
}

/// Relays one client's connection to VPP and records every frame VPP sends.
async fn recording_proxy(
    listener: tokio::net::UnixListener,
    upstream: PathBuf,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
) {
    let (client, _) = listener.accept().await.expect("accept");
    let server = tokio::net::UnixStream::connect(&upstream)
        .await
        .expect("connect to VPP");
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
    });
    while let Ok(Some(frame)) = read_frame(&mut sr, &upstream).await {
        frames.lock().expect("frames").push(frame.to_vec());
        if write_frame(&mut cw, &frame, &upstream).await.is_err() {
            break;
        }
    }
}

/// Captures the `vpp_message` corpus: the replies of a real VPP to what Scrambler asks it,
/// with an interface, an IPsec SA and an IPIP tunnel configured, and an error reply.
#[tokio::test]
#[ignore = "regenerates fuzz/corpus/vpp_message from a real VPP; run with --ignored"]
async fn capture_vpp_corpus() {
    let vpp = VppInstance::start("vfz", 0).await;
    vpp.netns.ip(&[
        "link", "add", "vpp0", "type", "veth", "peer", "name", "host0",
    ]);
    vpp.netns.ip(&["link", "set", "vpp0", "up"]);
    vpp.host_interface("vpp0", [2, 0, 0, 0, 0, 1], "192.0.2.1/24")
        .await;
    vpp.vppctl(&[
        "create",
        "ipip",
        "tunnel",
        "src",
        "192.0.2.1",
        "dst",
        "192.0.2.2",
    ]);
    vpp.vppctl(&[
        "ipsec",
        "sa",
        "add",
        "10",
        "spi",
        "1001",
        "esp",
        "crypto-alg",
        "aes-gcm-128",
        "crypto-key",
        "000102030405060708090a0b0c0d0e0f",
        "salt",
        "0x01020304",
    ]);
    let scratch = tempfile::tempdir().expect("tempdir");
    let proxy = scratch.path().join("proxy.sock");
    let frames = Arc::new(Mutex::new(Vec::new()));
    let relay = tokio::spawn(recording_proxy(
        tokio::net::UnixListener::bind(&proxy).expect("bind"),
        vpp.api_sock(),
        frames.clone(),
    ));
    let c = scrambler_vpp_api::VppClient::connect(&proxy)
        .await
        .expect("connect");
    c.show_version().await.expect("show_version");
    c.control_ping().await.expect("ping");
    let ifs = c.interfaces().await.expect("interfaces");
    c.cli("show interface").await.expect("cli");
    c.dump(&ip::IpAddressDump {
        sw_if_index: ifs[1].sw_if_index,
        is_ipv6: false,
    })
    .await
    .expect("addresses");
    c.dump(&ip::IpRouteDump::default()).await.expect("routes");
    c.dump(&ip::IpTableDump::default()).await.expect("tables");
    c.dump(&ipsec::IpsecSaV5Dump { sa_id: u32::MAX })
        .await
        .expect("SAs");
    c.dump(&ipsec::IpsecSpdsDump::default())
        .await
        .expect("SPDs");
    c.dump(&ipip::IpipTunnelDump {
        sw_if_index: u32::MAX,
    })
    .await
    .expect("tunnels");
    let refused = c
        .request(&interface::SwInterfaceSetFlags {
            sw_if_index: 9999,
            flags: types::IfStatusFlags::IF_STATUS_API_FLAG_ADMIN_UP,
        })
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let _ = c.close().await;
    relay.abort();
    let frames = frames.lock().expect("frames").clone();
    let reply = decode_message::<memclnt::SockclntCreateReply>(&frames[0]).expect("handshake");
    let names: HashMap<u16, String> = reply
        .message_table
        .into_iter()
        .map(|e| (e.index, e.name))
        .collect();
    let dir = Path::new(CRATE).join("fuzz/corpus/vpp_message");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for f in &frames {
        let id = u16::from_be_bytes([f[0], f[1]]);
        let name = names.get(&id).cloned().unwrap_or_else(|| format!("id{id}"));
        let n = seen.entry(name.clone()).or_default();
        *n += 1;
        if *n <= 3 {
            std::fs::write(dir.join(format!("{name}-{n}")), f).expect("write frame");
        }
    }
    assert!(seen.contains_key(&format!(
        "{}_{:08x}",
        ipsec::IpsecSaV5Details::NAME,
        ipsec::IpsecSaV5Details::CRC
    )));
}
