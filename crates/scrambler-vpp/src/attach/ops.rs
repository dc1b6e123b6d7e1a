//! The VPP side of an attachment: the gateway loopback, the pod's af_packet interface,
//! its static neighbours and routes — one or a few API calls per operation.

use std::net::IpAddr;

use ipnet::IpNet;
use scrambler_core::Result;
use scrambler_netlink::format_mac;

use crate::tunnel::{POD_TABLE_ID, ROUTE_PREFERENCE};

/// The name of the pods' VPP table.
const POD_TABLE_NAME: &str = "scrambler-pods";

/// A path that looks the destination up again in table 0.
fn lookup_in_table0(v6: bool) -> FibPath {
    FibPath {
        sw_if_index: u32::MAX,
        table_id: 0,
        weight: 1,
        preference: ROUTE_PREFERENCE,
        r#type: FibPathType::FIB_API_PATH_TYPE_NORMAL,
        proto: if v6 {
            FibPathNhProto::FIB_API_PATH_NH_PROTO_IP6
        } else {
            FibPathNhProto::FIB_API_PATH_NH_PROTO_IP4
        },
        nh: FibPathNh {
            classify_table_index: u32::MAX,
            ..Default::default()
        },
        ..Default::default()
    }
}

use super::{
    GATEWAY_INSTANCE, GATEWAY_MAC, GATEWAY_TAG, GATEWAY_V4, POD_RX_FRAMES_PER_BLOCK,
    POD_RX_FRAME_SIZE, POD_TX_FRAME_SIZE,
};
pub(crate) use crate::endpoint::vpp_err;
use scrambler_vpp_api::api::types::{
    AddressFamily, AfPacketFlags, AfPacketMode, FibPath, FibPathNh, FibPathNhProto, FibPathType,
    IfStatusFlags, IpNeighbor, IpNeighborFlags, IpRoute, IpTable, MacAddress,
};
use scrambler_vpp_api::api::{af_packet, interface, ip, ip_neighbor};
use scrambler_vpp_api::error::retval;
use scrambler_vpp_api::VppClient;

/// The VPP name of the af_packet interface on the node veth `host_name`.
pub(super) fn host_vpp(host_name: &str) -> String {
    format!("host-{host_name}")
}

/// One pod interface as VPP has it.
#[derive(Debug, Clone)]
pub(crate) struct PodInterface {
    pub(crate) sw_if_index: u32,
    pub(crate) host_if_name: String,
    pub(crate) tag: String,
    pub(crate) up: bool,
    pub(super) mac: [u8; 6],
    /// L3 MTU.
    pub(super) mtu: u32,
}

/// The VPP calls of an attachment on one API connection, one or a few requests each.
pub(crate) struct AttachCalls<'a> {
    pub(crate) c: &'a VppClient,
}

impl AttachCalls<'_> {
    /// The gateway loopback: the interface named `loop<GATEWAY_INSTANCE>` tagged
    /// [`GATEWAY_TAG`] (one filtered dump, not all interfaces).
    pub(crate) async fn find_gateway(&self) -> Result<Option<u32>> {
        let ifs = self
            .c
            .dump(&interface::SwInterfaceDump {
                sw_if_index: u32::MAX,
                name_filter_valid: true,
                name_filter: format!("loop{GATEWAY_INSTANCE}"),
            })
            .await
            .map_err(vpp_err("list", "interfaces"))?;
        Ok(ifs
            .iter()
            .find(|i| i.tag == GATEWAY_TAG)
            .map(|i| i.sw_if_index))
    }

    /// The gateway loopback, created (with its address, up) when missing, and the table
    /// its interfaces route in: a new gateway goes into the pods' VRF ([`POD_TABLE_ID`],
    /// with its default route into table 0) before it gets its address; one made by an
    /// earlier release stays where it is (table 0). Interfaces unnumbered to the gateway
    /// must be put in the same table first ([`AttachCalls::set_table`]).
    pub(crate) async fn ensure_gateway(&self) -> Result<(u32, u32)> {
        let sw = match self.find_gateway().await? {
            Some(sw) => sw,
            None => self.create_gateway().await?,
        };
        let want = IpNet::from(IpAddr::V4(GATEWAY_V4));
        if !self.addresses(sw, false).await?.contains(&want) {
            if self.interface_table(sw).await? != POD_TABLE_ID {
                self.ensure_pod_table().await?;
                if let Err(e) = self.set_table(sw, POD_TABLE_ID).await {
                    // a concurrent ADD may have been first
                    if self.interface_table(sw).await? != POD_TABLE_ID {
                        return Err(e);
                    }
                }
            }
            match self
                .c
                .request(&interface::SwInterfaceAddDelAddress {
                    sw_if_index: sw,
                    is_add: true,
                    del_all: false,
                    prefix: want.into(),
                })
                .await
            {
                Ok(_) => {}
                // a concurrent ADD may have been first
                Err(e) => {
                    if !self.addresses(sw, false).await?.contains(&want) {
                        return Err(vpp_err("add address to", "gateway loopback")(e));
                    }
                }
            }
        }
        self.set_up(sw, "gateway loopback").await?;
        let table = self.interface_table(sw).await?;
        if table == POD_TABLE_ID {
            self.ensure_pod_default_routes().await?;
        }
        Ok((sw, table))
    }

    /// The pods' VRF ([`POD_TABLE_ID`]), both families (adding an existing one is a no-op).
    pub(crate) async fn ensure_pod_table(&self) -> Result<()> {
        for is_ip6 in [false, true] {
            self.c
                .request(&ip::IpTableAddDel {
                    is_add: true,
                    table: IpTable {
                        table_id: POD_TABLE_ID,
                        is_ip6,
                        name: POD_TABLE_NAME.into(),
                    },
                })
                .await
                .map_err(vpp_err("add", &format!("VPP table {POD_TABLE_ID:#x}")))?;
        }
        Ok(())
    }

    /// The pods' VRF's default routes (`0.0.0.0/0`, `::/0`): a lookup in table 0, marked
    /// with [`ROUTE_PREFERENCE`]; added where missing.
    async fn ensure_pod_default_routes(&self) -> Result<()> {
        for v6 in [false, true] {
            let prefix: IpNet = if v6 { "::/0" } else { "0.0.0.0/0" }
                .parse()
                .unwrap_or_default();
            let r = self
                .c
                .request_unchecked(&ip::IpRouteLookup {
                    table_id: POD_TABLE_ID,
                    exact: 1,
                    prefix: prefix.into(),
                })
                .await
                .map_err(vpp_err("look up", &format!("{prefix} in the pods' table")))?;
            let ours = r.retval >= 0
                && r.route.paths.iter().any(|p| {
                    p.preference == ROUTE_PREFERENCE && p.sw_if_index == u32::MAX && p.table_id == 0
                });
            if !ours {
                self.c
                    .request(&ip::IpRouteAddDel {
                        is_add: true,
                        is_multipath: false,
                        route: IpRoute {
                            table_id: POD_TABLE_ID,
                            stats_index: 0,
                            prefix: prefix.into(),
                            paths: vec![lookup_in_table0(v6)],
                        },
                    })
                    .await
                    .map_err(vpp_err(
                        "add",
                        &format!("{prefix} of the pods' table into table 0"),
                    ))?;
            }
        }
        Ok(())
    }

    /// The IPv4 table of interface `sw`.
    pub(crate) async fn interface_table(&self, sw: u32) -> Result<u32> {
        let r = self
            .c
            .request(&interface::SwInterfaceGetTable {
                sw_if_index: sw,
                is_ipv6: false,
            })
            .await
            .map_err(vpp_err("get table of", &format!("sw_if_index {sw}")))?;
        Ok(r.vrf_id)
    }

    /// Puts interface `sw` (without addresses) in `table`, both families.
    pub(crate) async fn set_table(&self, sw: u32, table: u32) -> Result<()> {
        for is_ipv6 in [false, true] {
            self.c
                .request(&interface::SwInterfaceSetTable {
                    sw_if_index: sw,
                    is_ipv6,
                    vrf_id: table,
                })
                .await
                .map_err(vpp_err(
                    "set table of",
                    &format!("sw_if_index {sw} to {table:#x}"),
                ))?;
        }
        Ok(())
    }

    pub(super) async fn create_gateway(&self) -> Result<u32> {
        let r = self
            .c
            .request(&interface::CreateLoopbackInstance {
                mac_address: MacAddress(GATEWAY_MAC),
                is_specified: true,
                user_instance: GATEWAY_INSTANCE,
            })
            .await;
        let sw = match r {
            Ok(r) => r.sw_if_index,
            // most likely a concurrent ADD created it (VPP says "invalid registration" for
            // an instance in use); it is tagged a moment later
            Err(e) => {
                for _ in 0..50 {
                    if let Some(sw) = self.find_gateway().await? {
                        return Ok(sw);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                // still untagged: left by an ADD that died between creating and tagging it
                if let Some(sw) = self.untagged_gateway().await? {
                    self.tag_gateway(sw).await?;
                    tracing::warn!(sw_if_index = sw, "adopted an untagged gateway loopback");
                    return Ok(sw);
                }
                return Err(vpp_err(
                    "create",
                    &format!("gateway loopback loop{GATEWAY_INSTANCE}"),
                )(e));
            }
        };
        if let Err(e) = self.tag_gateway(sw).await {
            // an untagged gateway would make every later ADD fail
            if let Err(d) = self
                .c
                .request(&interface::DeleteLoopback { sw_if_index: sw })
                .await
            {
                tracing::error!(error = %d, sw_if_index = sw, "deleting the untagged gateway loopback failed");
            }
            return Err(e);
        }
        tracing::info!(sw_if_index = sw, "created the VPP gateway loopback");
        Ok(sw)
    }

    async fn tag_gateway(&self, sw: u32) -> Result<()> {
        self.c
            .request(&interface::SwInterfaceTagAddDel {
                is_add: true,
                sw_if_index: sw,
                tag: GATEWAY_TAG.into(),
            })
            .await
            .map_err(vpp_err("tag", "gateway loopback"))?;
        Ok(())
    }

    /// The gateway's loopback instance without a tag, with the gateway's MAC.
    async fn untagged_gateway(&self) -> Result<Option<u32>> {
        let ifs = self
            .c
            .interfaces()
            .await
            .map_err(vpp_err("list", "interfaces"))?;
        let name = format!("loop{GATEWAY_INSTANCE}");
        Ok(ifs
            .iter()
            .find(|i| i.interface_name == name && i.tag.is_empty() && i.l2_address.0 == GATEWAY_MAC)
            .map(|i| i.sw_if_index))
    }

    pub(super) async fn addresses(&self, sw: u32, v6: bool) -> Result<Vec<IpNet>> {
        let a = self
            .c
            .dump(&ip::IpAddressDump {
                sw_if_index: sw,
                is_ipv6: v6,
            })
            .await
            .map_err(vpp_err("list addresses of", &format!("sw_if_index {sw}")))?;
        Ok(a.iter().filter_map(|d| d.prefix.to_ipnet()).collect())
    }

    pub(crate) async fn set_up(&self, sw: u32, what: &str) -> Result<()> {
        self.c
            .request(&interface::SwInterfaceSetFlags {
                sw_if_index: sw,
                flags: IfStatusFlags::IF_STATUS_API_FLAG_ADMIN_UP,
            })
            .await
            .map_err(vpp_err("set up", what))?;
        Ok(())
    }

    pub(crate) async fn create_pod_interface(
        &self,
        tag: &str,
        host_name: &str,
        mac: [u8; 6],
        tx_frames: u32,
    ) -> Result<u32> {
        let name = host_vpp(host_name);
        let r = self
            .c
            .request(&af_packet::AfPacketCreateV3 {
                mode: AfPacketMode::AF_PACKET_API_MODE_ETHERNET,
                hw_addr: MacAddress(mac),
                use_random_hw_addr: false,
                host_if_name: host_name.into(),
                // let the kernel's partial checksums and GSO through as metadata
                flags: AfPacketFlags::AF_PACKET_API_FLAG_CKSUM_GSO,
                // small rings instead of VPP's defaults (~76 MB per interface)
                rx_frame_size: POD_RX_FRAME_SIZE,
                rx_frames_per_block: POD_RX_FRAMES_PER_BLOCK,
                tx_frame_size: POD_TX_FRAME_SIZE,
                tx_frames_per_block: tx_frames,
                num_rx_queues: 1,
                num_tx_queues: 1,
            })
            .await
            .map_err(vpp_err("create af_packet interface", &name))?;
        let sw = r.sw_if_index;
        self.c
            .request(&interface::SwInterfaceTagAddDel {
                is_add: true,
                sw_if_index: sw,
                tag: tag.into(),
            })
            .await
            .map_err(vpp_err("tag", &name))?;
        Ok(sw)
    }

    /// Every af_packet interface with its tag, state and MAC.
    pub(super) async fn pod_interfaces(&self) -> Result<Vec<PodInterface>> {
        let afs = self
            .c
            .dump(&af_packet::AfPacketDump {})
            .await
            .map_err(vpp_err("list", "af_packet interfaces"))?;
        let ifs = self
            .c
            .interfaces()
            .await
            .map_err(vpp_err("list", "interfaces"))?;
        Ok(afs
            .into_iter()
            .map(|a| {
                let i = ifs.iter().find(|i| i.sw_if_index == a.sw_if_index);
                PodInterface {
                    sw_if_index: a.sw_if_index,
                    host_if_name: a.host_if_name,
                    tag: i.map(|i| i.tag.clone()).unwrap_or_default(),
                    up: i.is_some_and(|i| {
                        i.flags.contains(IfStatusFlags::IF_STATUS_API_FLAG_ADMIN_UP)
                    }),
                    mac: i.map(|i| i.l2_address.0).unwrap_or_default(),
                    mtu: i.map(|i| i.mtu[0]).unwrap_or_default(),
                }
            })
            .collect())
    }

    /// The pod interface on the node veth `host_name` (the af_packet list and the one
    /// interface's details, not every interface's).
    pub(crate) async fn pod_interface(&self, host_name: &str) -> Result<Option<PodInterface>> {
        let afs = self
            .c
            .dump(&af_packet::AfPacketDump {})
            .await
            .map_err(vpp_err("list", "af_packet interfaces"))?;
        let Some(a) = afs.into_iter().find(|a| a.host_if_name == host_name) else {
            return Ok(None);
        };
        let ifs = self
            .c
            .dump(&interface::SwInterfaceDump {
                sw_if_index: a.sw_if_index,
                ..Default::default()
            })
            .await
            .map_err(vpp_err("list", &host_vpp(host_name)))?;
        let i = ifs.iter().find(|i| i.sw_if_index == a.sw_if_index);
        Ok(Some(PodInterface {
            sw_if_index: a.sw_if_index,
            host_if_name: a.host_if_name,
            tag: i.map(|i| i.tag.clone()).unwrap_or_default(),
            up: i.is_some_and(|i| i.flags.contains(IfStatusFlags::IF_STATUS_API_FLAG_ADMIN_UP)),
            mac: i.map(|i| i.l2_address.0).unwrap_or_default(),
            mtu: i.map(|i| i.mtu[0]).unwrap_or_default(),
        }))
    }

    /// Static neighbour `ip` → `mac` on `sw`, without a FIB entry (the route is ours).
    pub(crate) async fn neighbour(
        &self,
        sw: u32,
        ip: IpAddr,
        mac: [u8; 6],
        is_add: bool,
    ) -> Result<()> {
        let r = self
            .c
            .request(&ip_neighbor::IpNeighborAddDel {
                is_add,
                neighbor: IpNeighbor {
                    sw_if_index: sw,
                    flags: IpNeighborFlags::IP_API_NEIGHBOR_FLAG_STATIC
                        | IpNeighborFlags::IP_API_NEIGHBOR_FLAG_NO_FIB_ENTRY,
                    mac_address: MacAddress(mac),
                    ip_address: ip.into(),
                },
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if !is_add && e.retval() == Some(retval::NO_SUCH_ENTRY) => Ok(()),
            Err(e) => Err(vpp_err(
                if is_add {
                    "add neighbour"
                } else {
                    "delete neighbour"
                },
                &format!("{ip} lladdr {} on sw_if_index {sw}", format_mac(&mac)),
            )(e)),
        }
    }

    /// The neighbours on `sw`: (address, MAC).
    pub(crate) async fn neighbours(&self, sw: u32, v6: bool) -> Result<Vec<(IpAddr, [u8; 6])>> {
        let d = self
            .c
            .dump(&ip_neighbor::IpNeighborDump {
                sw_if_index: sw,
                af: if v6 {
                    AddressFamily::ADDRESS_IP6
                } else {
                    AddressFamily::ADDRESS_IP4
                },
            })
            .await
            .map_err(vpp_err("list neighbours of", &format!("sw_if_index {sw}")))?;
        Ok(d.iter()
            .filter(|n| n.neighbor.sw_if_index == sw)
            .filter_map(|n| Some((n.neighbor.ip_address.to_ip()?, n.neighbor.mac_address.0)))
            .collect())
    }

    /// Route `ip/32` (`/128`) via `ip` out of `sw`, in table 0.
    pub(crate) async fn route(&self, sw: u32, ip: IpAddr, is_add: bool) -> Result<()> {
        self.route_in(0, sw, ip, is_add).await
    }

    /// Route `ip/32` (`/128`) via `ip` out of `sw`, in `table`.
    pub(crate) async fn route_in(
        &self,
        table: u32,
        sw: u32,
        ip: IpAddr,
        is_add: bool,
    ) -> Result<()> {
        let prefix = IpNet::from(ip);
        let path = FibPath {
            sw_if_index: sw,
            weight: 1,
            r#type: FibPathType::FIB_API_PATH_TYPE_NORMAL,
            proto: if ip.is_ipv6() {
                FibPathNhProto::FIB_API_PATH_NH_PROTO_IP6
            } else {
                FibPathNhProto::FIB_API_PATH_NH_PROTO_IP4
            },
            nh: FibPathNh {
                address: scrambler_vpp_api::api::types::Address::from(ip).un,
                classify_table_index: u32::MAX,
                ..Default::default()
            },
            ..Default::default()
        };
        let r = self
            .c
            .request(&ip::IpRouteAddDel {
                is_add,
                is_multipath: false,
                route: IpRoute {
                    table_id: table,
                    stats_index: 0,
                    prefix: prefix.into(),
                    paths: vec![path],
                },
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if !is_add && e.retval() == Some(retval::NO_SUCH_ENTRY) => Ok(()),
            Err(e) => Err(vpp_err(
                if is_add { "add route" } else { "delete route" },
                &format!("{prefix} via sw_if_index {sw} in table {table:#x}"),
            )(e)),
        }
    }

    /// Prefixes of table 0 routed through `sw`.
    pub(crate) async fn routes_via(&self, sw: u32, v6: bool) -> Result<Vec<IpNet>> {
        let routes = self
            .c
            .dump(&ip::IpRouteDump {
                table: IpTable {
                    table_id: 0,
                    is_ip6: v6,
                    name: String::new(),
                },
            })
            .await
            .map_err(vpp_err("list", "routes"))?;
        Ok(routes
            .iter()
            .filter(|r| r.route.paths.iter().any(|p| p.sw_if_index == sw))
            .filter_map(|r| r.route.prefix.to_ipnet())
            // the interface's own link-local and connected entries are VPP's
            .filter(|p| !p.addr().is_ipv6() || !is_link_local(p.addr()))
            .collect())
    }

    /// Removes everything of the pod interface on `host_name` from VPP: routes through it,
    /// neighbours on it, the interface. Returns whether it existed.
    pub(super) async fn remove_pod_interface(&self, host_name: &str) -> Result<bool> {
        let Some(pif) = self.pod_interface(host_name).await? else {
            return Ok(false);
        };
        self.remove_found_pod_interface(&pif).await?;
        Ok(true)
    }

    /// Removes everything of `pif` from VPP: routes through it, neighbours on it, the
    /// interface.
    pub(crate) async fn remove_found_pod_interface(&self, pif: &PodInterface) -> Result<()> {
        let host_name = pif.host_if_name.as_str();
        let sw = pif.sw_if_index;
        // the pod's routes are in table 0 and, for a pod in the pods' VRF, there too
        let table = self.interface_table(sw).await?;
        // every pod address has a neighbour on the interface (added before its route):
        // its /32 (/128) route goes directly, without dumping the FIB. Only a family
        // without any neighbour (none of its addresses, or a neighbour removed behind our
        // back) is looked up in the FIB.
        for v6 in [false, true] {
            let neigh = self.neighbours(sw, v6).await?;
            if neigh.is_empty() {
                for p in self.routes_via(sw, v6).await? {
                    if p.prefix_len() == if v6 { 128 } else { 32 } {
                        self.route(sw, p.addr(), false).await?;
                    }
                }
            }
            for (ip, mac) in neigh {
                self.route(sw, ip, false).await?;
                if table != 0 {
                    self.route_in(table, sw, ip, false).await?;
                }
                self.neighbour(sw, ip, mac, false).await?;
            }
        }
        let name = host_vpp(host_name);
        self.c
            .request(&interface::SwInterfaceSetFlags {
                sw_if_index: sw,
                flags: IfStatusFlags(0),
            })
            .await
            .map_err(vpp_err("set down", &name))?;
        self.c
            .request(&af_packet::AfPacketDelete {
                host_if_name: host_name.into(),
            })
            .await
            .map_err(vpp_err("delete af_packet interface", &name))?;
        Ok(())
    }
}

pub(super) fn is_link_local(a: IpAddr) -> bool {
    match a {
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
        IpAddr::V4(v4) => v4.is_link_local(),
    }
}
