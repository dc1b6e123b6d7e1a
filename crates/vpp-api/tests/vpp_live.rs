//! Against a real VPP (see `../shared/vpp/README.md`) running in a test network namespace.

use scrambler_testkit::vpp::VppInstance;
use scrambler_vpp_api::api::af_packet::AfPacketCreateV3;
use scrambler_vpp_api::api::interface::{SwInterfaceAddDelAddress, SwInterfaceSetFlags};
use scrambler_vpp_api::api::ip::IpAddressDump;
use scrambler_vpp_api::api::types::{AfPacketMode, IfStatusFlags, MacAddress};
use scrambler_vpp_api::api::vpe::ShowVersion;
use scrambler_vpp_api::{Message, VppError};

#[tokio::test]
async fn show_version_ping_and_interface_dump() {
    let vpp = VppInstance::start("vppc", 0).await;
    let c = vpp.client().await;
    let v = c.show_version().await.unwrap();
    assert_eq!(v.program, "vpe");
    assert!(v.version.starts_with("26.10"), "{v:?}");
    let ping = c.control_ping().await.unwrap();
    assert!(ping.vpe_pid > 0);
    let ifs = c.interfaces().await.unwrap();
    assert_eq!(ifs[0].interface_name, "local0", "{ifs:?}");
    // concurrent requests are matched by context
    let (a, b, d) = tokio::join!(c.show_version(), c.control_ping(), c.interfaces());
    assert_eq!(a.unwrap().program, "vpe");
    assert!(b.is_ok());
    assert_eq!(d.unwrap().len(), ifs.len());
    assert!(c.cli("show version").await.unwrap().contains("vpp v26.10"));
    c.close().await.unwrap();
}

#[tokio::test]
async fn af_packet_interface_with_address() {
    let vpp = VppInstance::start("vppa", 0).await;
    let ns = &vpp.netns;
    ns.ip(&[
        "link", "add", "vpp0", "type", "veth", "peer", "name", "host0",
    ]);
    ns.ip(&["link", "set", "vpp0", "up"]);
    ns.ip(&["addr", "add", "10.0.0.2/24", "dev", "host0"]);
    ns.ip(&["link", "set", "host0", "up"]);

    let c = vpp.client().await;
    let created = c
        .request(&AfPacketCreateV3 {
            mode: AfPacketMode::AF_PACKET_API_MODE_ETHERNET,
            hw_addr: MacAddress([0x02, 0xfe, 0, 0, 0, 0x01]),
            use_random_hw_addr: false,
            host_if_name: "vpp0".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let sw = created.sw_if_index;
    c.request(&SwInterfaceSetFlags {
        sw_if_index: sw,
        flags: IfStatusFlags::IF_STATUS_API_FLAG_ADMIN_UP,
    })
    .await
    .unwrap();
    c.request(&SwInterfaceAddDelAddress {
        sw_if_index: sw,
        is_add: true,
        del_all: false,
        prefix: "10.0.0.1/24".parse::<ipnet::IpNet>().unwrap().into(),
    })
    .await
    .unwrap();

    // as VPP's CLI sees it
    let out = vpp.vppctl(&["show", "int", "addr"]);
    assert!(out.contains("host-vpp0 (up):"), "{out}");
    assert!(out.contains("L3 10.0.0.1/24"), "{out}");
    let hw = vpp.vppctl(&["show", "hardware-interfaces", "host-vpp0"]);
    assert!(hw.contains("02:fe:00:00:00:01"), "{hw}");
    // and through the API
    let ifs = c.interfaces().await.unwrap();
    let me = ifs.iter().find(|i| i.sw_if_index == sw).unwrap();
    assert_eq!(me.interface_name, "host-vpp0");
    assert!(me
        .flags
        .contains(IfStatusFlags::IF_STATUS_API_FLAG_ADMIN_UP));
    assert_eq!(me.l2_address.to_string(), "02:fe:00:00:00:01");
    let addrs = c
        .dump(&IpAddressDump {
            sw_if_index: sw,
            is_ipv6: false,
        })
        .await
        .unwrap();
    assert_eq!(addrs.len(), 1);
    assert_eq!(
        addrs[0].prefix.to_ipnet().unwrap().to_string(),
        "10.0.0.1/24"
    );
    // Linux reaches VPP through the veth
    let (ok, out) = ns.exec(&["busybox", "ping", "-c", "2", "-W", "2", "10.0.0.1"]);
    assert!(ok, "{out}");

    // a failing request names the message and VPP's error
    let e = c
        .request(&SwInterfaceSetFlags {
            sw_if_index: 9999,
            flags: IfStatusFlags::IF_STATUS_API_FLAG_ADMIN_UP,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.retval(),
        Some(scrambler_vpp_api::error::retval::INVALID_SW_IF_INDEX)
    );
    let s = e.to_string();
    assert!(
        s.contains("sw_interface_set_flags") && s.contains("INVALID_SW_IF_INDEX"),
        "{s}"
    );
    c.close().await.unwrap();
}

/// `show_version` as if generated from an .api.json where its CRC differs.
#[derive(Debug, Default)]
struct ShowVersionOtherCrc;

impl scrambler_vpp_api::codec::Encode for ShowVersionOtherCrc {
    fn encode(
        &self,
        _: &mut scrambler_vpp_api::codec::EncodeBuf,
    ) -> Result<(), scrambler_vpp_api::codec::CodecError> {
        Ok(())
    }
}
impl scrambler_vpp_api::codec::Decode for ShowVersionOtherCrc {
    fn decode(
        _: &mut scrambler_vpp_api::codec::Decoder<'_>,
    ) -> Result<Self, scrambler_vpp_api::codec::CodecError> {
        Ok(Self)
    }
}
impl Message for ShowVersionOtherCrc {
    const NAME: &'static str = "show_version";
    const CRC: u32 = 0xdeadbeef;
    const NAME_CRC: &'static str = "show_version_deadbeef";
    const HEADER: scrambler_vpp_api::message::Header =
        scrambler_vpp_api::message::Header::ClientIndexContext;
}
impl scrambler_vpp_api::Request for ShowVersionOtherCrc {
    type Reply = scrambler_vpp_api::api::vpe::ShowVersionReply;
}

#[tokio::test]
async fn crc_mismatch_is_a_clear_error() {
    let vpp = VppInstance::start("vppm", 0).await;
    let c = vpp.client().await;
    let e = c.request(&ShowVersionOtherCrc).await.unwrap_err();
    match &e {
        VppError::CrcMismatch {
            message,
            ours,
            theirs,
        } => {
            assert_eq!(message, "show_version");
            assert_eq!(ours, &0xdeadbeef);
            assert_eq!(theirs, &ShowVersion::CRC);
        }
        other => panic!("expected a CRC mismatch, got {other}"),
    }
    let s = e.to_string();
    assert!(
        s.contains("show_version") && s.contains("0xdeadbeef") && s.contains("0x51077d14"),
        "{s}"
    );
    // a message VPP does not have at all
    let e = c.message_id("no_such_message", 1).unwrap_err();
    assert!(matches!(e, VppError::UnknownMessage { .. }), "{e}");
    // the connection is still fine
    c.control_ping().await.unwrap();
    c.close().await.unwrap();
}

#[tokio::test]
async fn vpp_going_away_fails_requests_instead_of_hanging() {
    let mut vpp = VppInstance::start("vppk", 0).await;
    let c = vpp.client().await;
    c.control_ping().await.unwrap();
    vpp.stop();
    let started = std::time::Instant::now();
    let e = c.show_version().await.unwrap_err();
    assert!(
        matches!(e, VppError::Closed { .. } | VppError::Io { .. }),
        "{e}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // and later ones fail at once too
    assert!(c.control_ping().await.is_err());
    let e = scrambler_vpp_api::VppClient::connect(vpp.api_sock())
        .await
        .unwrap_err();
    assert!(matches!(e, VppError::Io { .. }), "{e}");
}
