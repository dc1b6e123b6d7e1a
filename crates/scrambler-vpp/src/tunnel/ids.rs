//! The numbers Scrambler owns in VPP, and how they name a peer: tunnel instances, SA ids,
//! the tunnel tag and the route marker.

use scrambler_core::{Generation, NodeId};

/// First IPIP tunnel instance Scrambler owns; the peer's node id is added.
pub const TUNNEL_INSTANCE_BASE: u32 = 0x5c_0000;

/// First SA id Scrambler owns; ids span 2^26 from here (4 slots of 2^24, see
/// [`sa_id_in_slot`]).
pub const SA_ID_BASE: u32 = 0x5c00_0000;

/// Slots of an inbound SA id: the inbound SAs of one peer and generation under several
/// epochs of the local node (its current one and previous ones it keeps, see
/// [`scrambler_core::Node::previous_epochs`]) coexist under ids that differ only in
/// their slot. Tunnel protection takes at most 4 inbound SAs, so 4 slots are enough.
pub const SA_SLOTS: u32 = 4;

/// The id of Scrambler's IPsec SPD, the underlay guard (see `underlay_guard`).
pub const UNDERLAY_SPD_ID: u32 = 0x5c_005c;

/// The id of the pods' VPP table (VRF, both families): the gateway loopback and every
/// interface unnumbered to it (pods, the host link) route in it. It holds a default route
/// into table 0 and, per peer, the peer's underlay addresses into its tunnel (drop until
/// protected and up), so a pod's traffic to a peer's underlay address is encrypted while
/// the tunnels' own packets to it (looked up in table 0) are not steered.
pub const POD_TABLE_ID: u32 = 0x5c_005c;

/// Prefix of the interface tag of Scrambler's tunnels.
pub const TAG_PREFIX: &str = "scrambler:peer=";

/// The path preference marking Scrambler's routes (VPP routes carry no tag; with a single
/// path per route the preference does not change forwarding).
pub const ROUTE_PREFERENCE: u8 = 0x5c;

/// The tunnel instance of the tunnel to `peer`.
pub fn tunnel_instance(peer: NodeId) -> u32 {
    TUNNEL_INSTANCE_BASE + u32::from(peer.get())
}

/// The peer id of an owned tunnel instance.
pub fn tunnel_peer(instance: u32) -> Option<u16> {
    instance
        .checked_sub(TUNNEL_INSTANCE_BASE)
        .and_then(|v| u16::try_from(v).ok())
        .filter(|v| *v != 0)
}

/// Which way an SA protects traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Sent to the peer.
    Outbound,
    /// Received from the peer.
    Inbound,
}

/// The SA id of the SA with `peer` in `dir` for `generation`:
/// `SA_ID_BASE | inbound << 23 | (generation mod 128) << 16 | peer id`.
pub fn sa_id(dir: Direction, peer: NodeId, generation: Generation) -> u32 {
    let d = u32::from(dir == Direction::Inbound);
    SA_ID_BASE
        | d << 23
        | (generation % scrambler_core::keys::SPI_GENERATIONS) << 16
        | u32::from(peer.get())
}

/// The id of [`sa_id`] in slot `slot` (`0..SA_SLOTS`, bits 24..26): slot 0 is
/// [`sa_id`] itself. Outbound SAs are always in slot 0; an inbound SA takes the slot
/// where reconcile finds it (by its SPI), or a free one (see the tunnel's plan).
pub fn sa_id_in_slot(dir: Direction, peer: NodeId, generation: Generation, slot: u32) -> u32 {
    sa_id(dir, peer, generation) | (slot % SA_SLOTS) << 24
}

/// The ids of [`sa_id`] in every slot, slot 0 first.
pub fn sa_id_slots(dir: Direction, peer: NodeId, generation: Generation) -> [u32; 4] {
    [0, 1, 2, 3].map(|s| sa_id_in_slot(dir, peer, generation, s))
}

/// True for SA ids of the shapes Scrambler makes: slot 0 (`0x5c000000..=0x5cffffff`,
/// either direction), and in slots 1..=3 (top byte `0x5d`..=`0x5f`) only inbound SAs
/// (bit 23 set) of a peer (node id not 0) — those are the only SAs Scrambler puts there,
/// so a foreign SA id in those bytes of another shape is never touched.
pub fn owned_sa(id: u32) -> bool {
    if id & 0xff00_0000 == SA_ID_BASE {
        return true;
    }
    id & 0xfc00_0000 == SA_ID_BASE && id & (1 << 23) != 0 && id & 0xffff != 0
}

/// The SA ids of `peer` in Scrambler's numbering, and whether each is inbound.
pub(super) fn peer_of_sa(id: u32) -> Option<(u16, Direction)> {
    if !owned_sa(id) {
        return None;
    }
    let dir = if id & (1 << 23) != 0 {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    Some(((id & 0xffff) as u16, dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::tests::id;
    use std::collections::BTreeSet;

    #[test]
    fn sa_ids_are_owned_and_distinct() {
        let mut seen = BTreeSet::new();
        for peer in [1, 2, 255, 256, 65535] {
            for g in [0, 1, 127, 128] {
                for d in [Direction::Inbound, Direction::Outbound] {
                    let v = sa_id(d, id(peer), g);
                    assert!(owned_sa(v), "{v:#x}");
                    if g < 128 {
                        assert!(seen.insert(v), "duplicate {v:#x}");
                    }
                }
            }
        }
        assert!(!owned_sa(10) && !owned_sa(0x6000_0000) && !owned_sa(0x5b00_0000));
    }

    #[test]
    fn only_inbound_sas_of_a_peer_are_owned_in_slots_1_to_3() {
        for slot in 1..SA_SLOTS {
            let inbound = sa_id_in_slot(Direction::Inbound, id(7), 5, slot);
            assert!(owned_sa(inbound), "{inbound:#x}");
            // an outbound SA is never put outside slot 0: an id of that shape is foreign
            let outbound = sa_id(Direction::Outbound, id(7), 5) | slot << 24;
            assert!(!owned_sa(outbound), "{outbound:#x}");
            assert_eq!(peer_of_sa(outbound), None);
            // nor of node id 0
            let no_peer = inbound & !0xffff;
            assert!(!owned_sa(no_peer), "{no_peer:#x}");
        }
        assert!(!owned_sa(0x5d00_0000) && !owned_sa(0x5f7f_ffff));
        assert!(owned_sa(0x5f80_0001) && !owned_sa(0x6080_0001));
        // slot 0 stays owned as a whole (what earlier releases made there)
        assert!(owned_sa(0x5c00_0000) && owned_sa(0x5cff_ffff));
    }

    #[test]
    fn slots_keep_peer_direction_and_generation_and_stay_owned() {
        let ids = sa_id_slots(Direction::Inbound, id(513), 3);
        assert_eq!(ids[0], sa_id(Direction::Inbound, id(513), 3));
        let distinct: BTreeSet<u32> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), 4);
        for v in ids {
            assert!(owned_sa(v), "{v:#x}");
            assert_eq!(peer_of_sa(v), Some((513, Direction::Inbound)));
        }
        // no slot of one SA is another SA's id
        let other = sa_id_slots(Direction::Outbound, id(513), 3);
        assert!(other.iter().all(|o| !distinct.contains(o)));
    }

    #[test]
    fn sa_ids_name_their_peer_and_direction() {
        let v = sa_id(Direction::Inbound, id(513), 3);
        assert_eq!(peer_of_sa(v), Some((513, Direction::Inbound)));
        let v = sa_id(Direction::Outbound, id(2), 130);
        assert_eq!(peer_of_sa(v), Some((2, Direction::Outbound)));
        assert_eq!(peer_of_sa(10), None);
    }

    #[test]
    fn tunnel_instances_map_back_to_peers() {
        assert_eq!(tunnel_peer(tunnel_instance(id(7))), Some(7));
        assert_eq!(tunnel_peer(0), None);
        assert_eq!(tunnel_peer(TUNNEL_INSTANCE_BASE), None);
        assert_eq!(tunnel_peer(TUNNEL_INSTANCE_BASE + 70000), None);
    }
}
