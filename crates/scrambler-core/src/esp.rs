//! ESP parameters every dataplane must agree on, so kernel and VPP nodes interoperate.
//!
//! Tunnel mode, outer addresses = the nodes' underlay addresses, AEAD AES-GCM-128
//! (kernel `rfc4106(gcm(aes))` with a 16-byte key + 4-byte salt; VPP `aes-gcm-128` with
//! `salt`), 128-bit ICV, extended sequence numbers, anti-replay window.

/// Kernel AEAD algorithm name.
pub const KERNEL_AEAD: &str = "rfc4106(gcm(aes))";
/// ICV length in bits.
pub const ICV_BITS: u32 = 128;
/// Anti-replay window (packets), as Cilium uses.
pub const REPLAY_WINDOW: u32 = 1024;
/// Extended sequence numbers are on.
pub const ESN: bool = true;

/// ESP tunnel-mode overhead with AES-GCM-128 in bytes, worst case including padding:
/// outer IP header (20 / 40) + ESP header 8 + IV 8 + padding ≤ 3 + pad length and next
/// header 2 + ICV 16.
pub fn esp_overhead(outer_v6: bool) -> u32 {
    let outer = if outer_v6 { 40 } else { 20 };
    outer + 8 + 8 + 3 + 2 + ICV_BITS / 8
}

/// The MTU to give pods so that their packets, once in ESP, never exceed `underlay_mtu`.
/// Rounded down to a multiple of 4 so GCM's 4-byte padding never pushes a full-size packet
/// over.
pub fn pod_mtu(underlay_mtu: u32, outer_v6: bool) -> u32 {
    underlay_mtu.saturating_sub(esp_overhead(outer_v6)) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_mtu_leaves_room_for_esp() {
        assert_eq!(esp_overhead(false), 57);
        assert_eq!(esp_overhead(true), 77);
        assert_eq!(pod_mtu(1500, false), 1440);
        assert_eq!(pod_mtu(1500, true), 1420);
        // the smallest underlay whose pod MTU still carries IPv6 (1280)
        assert_eq!(pod_mtu(1357, true), 1280);
        assert!(pod_mtu(1356, true) < 1280);
        for (outer_v6, outer) in [(false, 20), (true, 40)] {
            for mtu in 1280..9000 {
                let p = pod_mtu(mtu, outer_v6);
                // payload padded to 4 bytes (with the 2-byte trailer) must fit
                let esp_payload = (p + 2).div_ceil(4) * 4;
                assert!(
                    outer + 8 + 8 + esp_payload + 16 <= mtu,
                    "mtu {mtu} outer_v6 {outer_v6}"
                );
                // and no more than the padding's 3 bytes (and the rounding's) are lost
                assert!(mtu - (outer + 8 + 8 + esp_payload + 16) < 8, "mtu {mtu}");
            }
        }
    }
}
