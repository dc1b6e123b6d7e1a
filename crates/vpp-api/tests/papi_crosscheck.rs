//! Our generated encoding against vpp-papi's (a real VPP client), packing the same
//! `.api.json`: the bytes must be identical. Needs `python3` with `vpp-papi==2.4.2`.

use scrambler_vpp_api::api::types::*;
use scrambler_vpp_api::api::{af_packet, interface, ip, ipip, ipsec, memclnt, vpe};
use scrambler_vpp_api::message::{decode_message, encode_message, Message};
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

const MSG_ID: u16 = 0x1234;
const CLIENT: u32 = 0x0a0b_0c0d;
const CONTEXT: u32 = 0x5566_7788;

fn hexv(b: &[u8]) -> Value {
    json!({ "$hex": hex::encode(b) })
}

fn addr4(a: [u8; 4]) -> Value {
    let mut un = [0u8; 16];
    un[..4].copy_from_slice(&a);
    json!({"af": 0, "un": {"ip4": hexv(&a)}})
}

fn addr6(a: [u8; 16]) -> Value {
    json!({"af": 1, "un": {"ip6": hexv(&a)}})
}

/// Packs each `(name, args)` with vpp-papi; args get the header fields added.
fn papi_pack(cases: &[(&str, Value)]) -> Vec<Vec<u8>> {
    let api_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/api");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/papi_pack.py");
    let cases: Vec<Value> = cases
        .iter()
        .map(|(name, args)| {
            let mut a = args.clone();
            let o = a.as_object_mut().unwrap();
            o.insert("_vl_msg_id".into(), json!(MSG_ID));
            o.insert("client_index".into(), json!(CLIENT));
            o.insert("context".into(), json!(CONTEXT));
            json!({"name": name, "args": a})
        })
        .collect();
    let input = json!({"api_dir": api_dir, "cases": cases}).to_string();
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "vpp-papi packing failed (is vpp-papi installed? pip install vpp-papi==2.4.2): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["packed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| hex::decode(h.as_str().unwrap()).unwrap())
        .collect()
}

fn ours<M: Message>(m: &M) -> Vec<u8> {
    encode_message(m, MSG_ID, CLIENT, CONTEXT).unwrap().to_vec()
}

/// Both encodings agree, and our decoder reads papi's bytes back to the same message.
fn check<M: Message + PartialEq>(m: &M, papi: &[u8]) {
    let mine = ours(m);
    assert_eq!(
        hex::encode(&mine),
        hex::encode(papi),
        "{} differs from vpp-papi",
        M::NAME
    );
    let back: M = decode_message(papi).unwrap();
    assert!(&back == m, "{} does not decode back: {back:?}", M::NAME);
}

#[test]
fn encoding_matches_vpp_papi() {
    let key: Vec<u8> = (1..=16).collect();
    let mut key_data = [0u8; 128];
    key_data[..16].copy_from_slice(&key);

    let sad = ipsec::IpsecSadEntryAddV2 {
        entry: IpsecSadEntryV4 {
            sad_id: 0x5c00_0102,
            spi: 0x0201_0002,
            protocol: IpsecProto::IPSEC_API_PROTO_ESP,
            crypto_algorithm: IpsecCryptoAlg::IPSEC_API_CRYPTO_ALG_AES_GCM_128,
            crypto_key: Key {
                length: 16,
                data: key_data,
            },
            integrity_algorithm: IpsecIntegAlg::IPSEC_API_INTEG_ALG_NONE,
            integrity_key: Key::default(),
            flags: IpsecSadFlags::IPSEC_API_SAD_FLAG_USE_ESN
                | IpsecSadFlags::IPSEC_API_SAD_FLAG_USE_ANTI_REPLAY,
            tunnel: Tunnel {
                instance: u32::MAX,
                src: "192.0.2.1".parse::<std::net::IpAddr>().unwrap().into(),
                dst: "192.0.2.2".parse::<std::net::IpAddr>().unwrap().into(),
                sw_if_index: u32::MAX,
                table_id: 0,
                encap_decap_flags: TunnelEncapDecapFlags(0),
                mode: TunnelMode::TUNNEL_API_MODE_P2P,
                flags: TunnelFlags(0),
                dscp: IpDscp::IP_API_DSCP_CS0,
                hop_limit: 64,
            },
            salt: 0xa1b2_c3d4,
            udp_src_port: 4500,
            udp_dst_port: 4500,
            anti_replay_window_size: 1024,
        },
    };
    let sad_args = json!({"entry": {
        "sad_id": 0x5c00_0102u32, "spi": 0x0201_0002u32, "protocol": 50,
        "crypto_algorithm": 7,
        "crypto_key": {"length": 16, "data": hexv(&key)},
        "integrity_algorithm": 0,
        "integrity_key": {"length": 0, "data": hexv(&[])},
        "flags": 1 | 2,
        "tunnel": {"instance": u32::MAX, "src": addr4([192, 0, 2, 1]), "dst": addr4([192, 0, 2, 2]),
                   "sw_if_index": u32::MAX, "table_id": 0, "encap_decap_flags": 0, "mode": 0,
                   "flags": 0, "dscp": 0, "hop_limit": 64},
        "salt": 0xa1b2_c3d4u32, "udp_src_port": 4500, "udp_dst_port": 4500,
        "anti_replay_window_size": 1024,
    }});

    let v6: [u8; 16] = "2001:db8::7"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets();
    let addr = interface::SwInterfaceAddDelAddress {
        sw_if_index: 3,
        is_add: true,
        del_all: false,
        prefix: "2001:db8::7/64".parse::<ipnet::IpNet>().unwrap().into(),
    };
    let addr_args = json!({"sw_if_index": 3, "is_add": true, "del_all": false,
                           "prefix": {"address": addr6(v6), "len": 64}});

    let tun = ipip::IpipAddTunnel {
        tunnel: IpipTunnel {
            instance: 7001,
            src: "198.51.100.1".parse::<std::net::IpAddr>().unwrap().into(),
            dst: "198.51.100.2".parse::<std::net::IpAddr>().unwrap().into(),
            sw_if_index: 0,
            table_id: 0,
            flags: TunnelEncapDecapFlags(0),
            mode: TunnelMode::TUNNEL_API_MODE_P2P,
            dscp: IpDscp::IP_API_DSCP_CS0,
        },
    };
    let tun_args = json!({"tunnel": {"instance": 7001, "src": addr4([198, 51, 100, 1]),
        "dst": addr4([198, 51, 100, 2]), "sw_if_index": 0, "table_id": 0, "flags": 0,
        "mode": 0, "dscp": 0}});

    // variable array (count computed), union arm ip4, fixed array of 16 structs
    let mut path = FibPath {
        sw_if_index: 5,
        table_id: 0,
        rpf_id: 0,
        weight: 1,
        preference: 0,
        r#type: FibPathType::FIB_API_PATH_TYPE_NORMAL,
        flags: FibPathFlags(0),
        proto: FibPathNhProto::FIB_API_PATH_NH_PROTO_IP4,
        nh: FibPathNh {
            address: AddressUnion::from_ip4(&Ip4Address([172, 31, 255, 2])).unwrap(),
            via_label: 0,
            obj_id: 0,
            classify_table_index: u32::MAX,
        },
        n_labels: 0,
        label_stack: Default::default(),
    };
    path.label_stack[0].label = 77;
    let route = ip::IpRouteAddDel {
        is_add: true,
        is_multipath: false,
        route: IpRoute {
            table_id: 0,
            stats_index: 0,
            prefix: "10.1.1.0/24".parse::<ipnet::IpNet>().unwrap().into(),
            paths: vec![path.clone(), path],
        },
    };
    let label = |l: u32| json!({"is_uniform": 0, "label": l, "ttl": 0, "exp": 0});
    let mut labels: Vec<Value> = (0..16).map(|_| label(0)).collect();
    labels[0] = label(77);
    let p = json!({"sw_if_index": 5, "table_id": 0, "rpf_id": 0, "weight": 1, "preference": 0,
        "type": 0, "flags": 0, "proto": 0,
        "nh": {"address": {"ip4": hexv(&[172, 31, 255, 2])}, "via_label": 0, "obj_id": 0,
               "classify_table_index": u32::MAX},
        "n_labels": 0, "label_stack": labels});
    let route_args = json!({"is_add": true, "is_multipath": false, "route": {
        "table_id": 0, "stats_index": 0, "prefix": {"address": addr4([10, 1, 1, 0]), "len": 24},
        "n_paths": 2, "paths": [p.clone(), p]}});

    let protect = ipsec::IpsecTunnelProtectUpdate {
        tunnel: IpsecTunnelProtect {
            sw_if_index: 9,
            nh: Address::default(),
            sa_out: 0x5c00_0102,
            sa_in: vec![0x5c01_0201, 0x5c02_0201],
        },
    };
    let protect_args = json!({"tunnel": {"sw_if_index": 9, "nh": addr4([0, 0, 0, 0]),
        "sa_out": 0x5c00_0102u32, "n_sa_in": 2, "sa_in": [0x5c01_0201u32, 0x5c02_0201u32]}});

    // fixed string, enum, enumflag, defaults from the .api.json
    let afp = af_packet::AfPacketCreateV3 {
        mode: AfPacketMode::AF_PACKET_API_MODE_ETHERNET,
        hw_addr: MacAddress([2, 0xfe, 0, 0, 0, 1]),
        use_random_hw_addr: false,
        host_if_name: "vpp0".into(),
        flags: AfPacketFlags::AF_PACKET_API_FLAG_QDISC_BYPASS,
        ..Default::default()
    };
    assert_eq!((afp.num_rx_queues, afp.num_tx_queues), (1, 1));
    let afp_args = json!({"mode": 1, "hw_addr": hexv(&[2, 0xfe, 0, 0, 0, 1]),
        "use_random_hw_addr": false, "host_if_name": "vpp0", "flags": 1});

    // variable string, default ~0
    let dump = interface::SwInterfaceDump {
        name_filter_valid: true,
        name_filter: "host-".into(),
        ..Default::default()
    };
    assert_eq!(dump.sw_if_index, u32::MAX);
    let dump_args = json!({"name_filter_valid": true, "name_filter": "host-"});

    // replies: fixed strings; a variable array of typedefs holding strings
    let ver = vpe::ShowVersionReply {
        retval: -3,
        program: "vpe".into(),
        version: "26.10-rc0".into(),
        build_date: "today".into(),
        build_directory: "/src".into(),
    };
    let ver_args = json!({"retval": -3, "program": "vpe", "version": "26.10-rc0",
        "build_date": "today", "build_directory": "/src"});
    let sock = memclnt::SockclntCreateReply {
        response: 0,
        index: 0x10203,
        message_table: vec![
            MessageTableEntry {
                index: 1,
                name: "memclnt_create_9c5e1c2f".into(),
            },
            MessageTableEntry {
                index: 700,
                name: "show_version_51077d14".into(),
            },
        ],
    };
    let sock_args = json!({"response": 0, "index": 0x10203, "count": 2, "message_table": [
        {"index": 1, "name": "memclnt_create_9c5e1c2f"},
        {"index": 700, "name": "show_version_51077d14"}]});

    let packed = papi_pack(&[
        ("ipsec_sad_entry_add_v2", sad_args),
        ("sw_interface_add_del_address", addr_args),
        ("ipip_add_tunnel", tun_args),
        ("ip_route_add_del", route_args),
        ("ipsec_tunnel_protect_update", protect_args),
        ("af_packet_create_v3", afp_args),
        ("sw_interface_dump", dump_args),
        ("show_version_reply", ver_args),
        ("sockclnt_create_reply", sock_args),
    ]);
    check(&sad, &packed[0]);
    check(&addr, &packed[1]);
    check(&tun, &packed[2]);
    check(&route, &packed[3]);
    check(&protect, &packed[4]);
    check(&afp, &packed[5]);
    check(&dump, &packed[6]);
    check(&ver, &packed[7]);
    check(&sock, &packed[8]);
}

#[test]
fn secrets_stay_out_of_debug() {
    let mut data = [0u8; 128];
    data[..4].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let mut e = IpsecSadEntryV4::default();
    e.crypto_key = Key { length: 16, data };
    e.salt = 0x1234_5678;
    let s = format!("{e:?}");
    assert!(!s.contains("222") && !s.contains("305419896"), "{s}");
    assert!(s.contains("<redacted>"));
}
