//! Fuzzing of XFRM netlink answers from the bytes up: a datagram is split and deserialized
//! (netlink-packet-xfrm), ACKs become results with the kernel's extended-ACK text, and dump
//! answers become the policies and states Scrambler reconciles (diff against a planned mesh,
//! status). Every datagram must give a result or a clean error. Corpus:
//! `fuzz/corpus/xfrm_reply/`: answers of this kernel captured in a test namespace
//! ([`capture_corpus`]: policy dumps, the refusal of a state) and, as this kernel has no
//! ESP, state dump answers built from planned states (`synth-*`).

use crate::config::XfrmConfig;
use crate::diff::diff;
use crate::nl::{ack_result, split, to_error, Answer};
use crate::plan::{tests::mesh, Desired};
use crate::status::{build, Observed};
use crate::tunnel::dumped_from;
use netlink_packet_core::{
    DoneMessage, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_MULTIPART,
    NLM_F_REQUEST,
};
use netlink_packet_xfrm::XfrmMessage;
use scrambler_core::ClusterSecret;
use scrambler_fuzz::{Shape, Target};
use std::path::Path;

const CRATE: &str = env!("CARGO_MANIFEST_DIR");

fn check_datagram(buf: &[u8], cfg: &XfrmConfig, desired: &Desired) {
    let Ok(messages) = split(buf) else { return };
    let mut answers = Vec::new();
    for (header, payload) in messages {
        match payload {
            Answer::Error(e) => {
                if let Err(e) = ack_result(&header, &e) {
                    let _ = to_error("add xfrm state", "fuzz", &e).to_string();
                }
            }
            Answer::Message(m) => answers.push(m),
            _ => {}
        }
    }
    // the same answers once more as the state dump (scrubbed messages are not cloned)
    let states = split(buf)
        .into_iter()
        .flatten()
        .filter_map(|(_, a)| match a {
            Answer::Message(m) => Some(m),
            _ => None,
        })
        .collect();
    let dumped = dumped_from(&answers, states);
    let _ = diff(cfg, desired, &dumped.policies, &dumped.states, true);
    let _ = build(
        cfg,
        &mesh(1, 3),
        Observed {
            policies: &dumped.policies,
            states: &dumped.states,
            routes: None,
            table_routes: None,
            rules: &Default::default(),
            unreachable: &Default::default(),
            xfrm_stat: Default::default(),
        },
    );
}

#[test]
fn fuzz_xfrm_reply() {
    let cfg = XfrmConfig::default();
    let secret = ClusterSecret::from_bytes(vec![3; 32]).expect("secret");
    let desired = Desired::plan(&cfg, &mesh(1, 3), Some(&secret)).expect("plan");
    let r = Target::new(CRATE, "xfrm_reply", Shape::Bytes, 3000)
        .dictionary([
            &0x32u16.to_ne_bytes()[..], // NLMSG_ERROR... XFRM_MSG_ACQUIRE range edges
            &0x13u16.to_ne_bytes(),     // XFRM_MSG_NEWPOLICY
            &0x10u16.to_ne_bytes(),     // XFRM_MSG_NEWSA
            &2u16.to_ne_bytes(),        // NLMSG_ERROR
            &3u16.to_ne_bytes(),        // NLMSG_DONE
            &0x200u16.to_ne_bytes(),    // NLM_F_ACK_TLVS
            &16u32.to_ne_bytes(),
            &u32::MAX.to_ne_bytes(),
        ])
        .run(|buf| check_datagram(buf, &cfg, &desired));
    assert!(r.generated > 0 && r.corpus > 0, "{r:?}");
}

/// `msgs` as one dump answer datagram: each with `NLM_F_MULTI`, then `NLMSG_DONE`.
fn dump_datagram(msgs: Vec<XfrmMessage>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |payload| {
        let mut h = NetlinkHeader::default();
        h.flags = NLM_F_MULTIPART;
        h.sequence_number = 7;
        let mut m = NetlinkMessage::new(h, payload);
        m.finalize();
        let start = out.len();
        out.resize(start + m.buffer_len(), 0);
        m.serialize(&mut out[start..]);
    };
    for m in msgs {
        push(NetlinkPayload::InnerMessage(m));
    }
    push(NetlinkPayload::Done(DoneMessage::default()));
    out
}

/// Sends `msg` with `flags` on a fresh XFRM socket of the calling thread's namespace and
/// returns the raw answer datagrams up to the end of the dump or the ACK.
fn raw_answers(msg: XfrmMessage, flags: u16) -> Vec<Vec<u8>> {
    use netlink_sys::{protocols::NETLINK_XFRM, Socket};
    let mut sock = Socket::new(NETLINK_XFRM).expect("xfrm socket");
    sock.bind_auto().expect("bind");
    sock.set_ext_ack(true).expect("ext ack");
    sock.set_cap_ack(true).expect("cap ack");
    let mut h = NetlinkHeader::default();
    h.flags = flags;
    h.sequence_number = 1;
    let mut m = NetlinkMessage::new(h, NetlinkPayload::InnerMessage(msg));
    m.finalize();
    let mut out = vec![0u8; m.buffer_len()];
    m.serialize(&mut out);
    sock.send(&out, 0).expect("send");
    let mut datagrams = Vec::new();
    loop {
        let mut buf = Vec::with_capacity(64 * 1024);
        sock.recv(&mut buf, 0).expect("recv");
        let last = split(&buf)
            .expect("kernel answer parses")
            .iter()
            .any(|(_, p)| matches!(p, Answer::Done | Answer::Error(_)));
        datagrams.push(buf);
        if last {
            return datagrams;
        }
    }
}

/// Writes the `xfrm_reply` corpus: this kernel's answers in a test namespace holding
/// Scrambler's planned policies and a foreign IKE daemon's, and the refusal of a state;
/// plus state dump answers built from planned states.
#[test]
#[ignore = "regenerates fuzz/corpus/xfrm_reply in a test netns; run with --ignored"]
fn capture_corpus() {
    use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL};
    let dir = Path::new(CRATE).join("fuzz/corpus/xfrm_reply");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let cfg = XfrmConfig::default();
    let secret = ClusterSecret::from_bytes(vec![3; 32]).expect("secret");
    let desired = Desired::plan(&cfg, &mesh(1, 3), Some(&secret)).expect("plan");
    let ns = scrambler_testkit::netns::TestNetns::new("xf-fuzz");
    ns.ip(&[
        "xfrm",
        "policy",
        "add",
        "src",
        "10.9.0.0/24",
        "dst",
        "10.8.0.0/24",
        "dir",
        "out",
        "tmpl",
        "src",
        "198.51.100.1",
        "dst",
        "198.51.100.2",
        "proto",
        "esp",
        "mode",
        "tunnel",
        "tmpl",
        "src",
        "198.51.100.1",
        "dst",
        "198.51.100.3",
        "proto",
        "esp",
        "mode",
        "tunnel",
    ]);
    ns.ip(&[
        "xfrm",
        "policy",
        "add",
        "src",
        "fd00:9::/64",
        "dst",
        "fd00:8::/64",
        "proto",
        "tcp",
        "dport",
        "443",
        "dir",
        "in",
        "action",
        "block",
    ]);
    let policies: Vec<XfrmMessage> = desired.policies.values().map(|p| p.add_msg()).collect();
    let state = desired
        .states
        .values()
        .next()
        .expect("a planned state")
        .add_msg();
    let captured = ns
        .netns()
        .run(move || {
            for p in policies {
                raw_answers(p, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
            }
            let dump = raw_answers(crate::model::policy_dump_msg(), NLM_F_REQUEST | NLM_F_DUMP);
            let refused = raw_answers(state, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
            Ok((dump, refused))
        })
        .expect("capture in the namespace");
    for (i, d) in captured.0.iter().enumerate() {
        std::fs::write(dir.join(format!("policy-dump-{i}")), d).expect("write");
    }
    std::fs::write(dir.join("state-add-refused-ext-ack"), &captured.1[0]).expect("write");
    let states: Vec<XfrmMessage> = desired.states.values().map(|s| s.add_msg()).collect();
    std::fs::write(dir.join("synth-state-dump"), dump_datagram(states)).expect("write");
}
