//! # scrambler-ipam
//!
//! Host-local-class address management that operators can trust: the conf has the same
//! shape as the CNI `host-local` plugin's, leases live on disk one file per address, and
//! every change is locked and atomic. Use it as a library ([`LocalIpam`], which
//! implements [`scrambler_core::Ipam`]) or as the CNI IPAM plugin binary `scrambler-ipam`,
//! which bridge, ipvlan, macvlan or Scrambler's own plugin can delegate to exactly as they
//! delegate to host-local.
//!
//! ## What it guarantees
//!
//! * One address per range set (one IPv4 set + one IPv6 set = dual stack), never the
//!   network address, the IPv4 broadcast, the gateway, or anything in `exclude`.
//! * No address is handed out twice, across any number of concurrent plugin processes: the
//!   scan of the lease directory and the write of the new lease happen under one `flock`.
//! * Leases are written atomically (temp file, then rename): a crashed plugin never leaves
//!   a torn lease. As with host-local nothing is fsynced: a lease only has to outlive its
//!   pod, and a power failure kills the pods whose leases it could lose. A lease file that does not parse was damaged by
//!   something else; it is logged with its path, its address stays taken, and
//!   [`LocalIpam::lease_files`] / `list` show it (with an empty holder). GC keeps it.
//! * Allocate is idempotent per (container id, ifname); release of an unknown id succeeds;
//!   a requested address is honoured or refused with a reason; exhaustion is
//!   [`Error::RangeExhausted`](scrambler_core::Error::RangeExhausted) (CNI code 101) naming
//!   the range set.
//! * Allocation rotates through each range set from the last address reserved (as
//!   host-local does), so a released address is not reused at once.
//! * A write that fails (a full disk, an I/O error) leaves neither a lease nor a temp file.
//! * A `dataDir` that cannot be written (a read-only mount) still answers whatever needs no
//!   write: DEL or GC with nothing to release, CHECK, STATUS, an ADD the attachment's lease
//!   already answers. What must write fails with CNI code 5 saying the lease directory is
//!   not writable.
//! * The network name (the conf's `name`) must be a name as the CNI spec defines it
//!   (code 7 otherwise): it names the lease directory `dataDir/<name>`.
//!
//! ## Where leases live — and what that means at reboot
//!
//! Leases of network `N` live in `dataDir/N/` (default `dataDir`:
//! [`/var/lib/cni/networks`](conf::DEFAULT_DATA_DIR), like host-local), one file per
//! address named by the address, holding `{"containerId": …, "ifname": …}`, plus `lock`,
//! `last_reserved_ip.<set>`, and `by-holder/`, an index of hard links that spares
//! allocate and release from reading every lease file (see [`store`]). Lease files in
//! host-local's own format are read too. Do not point host-local itself at the same
//! directory: it does not take the same lock.
//!
//! Choose `dataDir` by whether containers outlive a reboot. A
//! directory on tmpfs under `/run` (e.g. `/run/scrambler/ipam`) **frees every address on
//! reboot**: right for Kubernetes nodes, whose pod sandboxes are all recreated after a
//! reboot (no stale leases pile up), wrong wherever containers are restored with their
//! old addresses (the freed addresses would be handed out again while still in use). The
//! persistent default keeps leases across reboots; stale ones are then released by CNI
//! `GC` (see [`LocalIpam::gc_blocking`]).
//!
//! ## Conf reference
//!
//! The `ipam` section of a CNI conf:
//!
//! | Field | Type | Default | Meaning |
//! |---|---|---|---|
//! | `type` | string | — | `"scrambler-ipam"` (ignored by the library) |
//! | `ranges` | array of range sets | — | each range set is an array of range objects; one address is allocated per set |
//! | `ranges[][].subnet` | CIDR | required | subnet to allocate from (host bits are cleared; IPv4 up to /30, IPv6 up to /126) |
//! | `ranges[][].rangeStart` | IP | first address after the network address | first address handed out |
//! | `ranges[][].rangeEnd` | IP | last address before the IPv4 broadcast / last IPv6 address | last address handed out |
//! | `ranges[][].gateway` | IP | first address after the network address | gateway returned with the address; never handed out |
//! | `subnet`, `rangeStart`, `rangeEnd`, `gateway` | | | legacy single range (host-local's older form), prepended as range set 0 |
//! | `routes` | array of `{dst, gw?}` | `[]` | routes returned with every allocation |
//! | `dataDir` | absolute path | `/var/lib/cni/networks` | lease directory root (see above) |
//! | `resolvConf` | path | none | resolv.conf whose nameserver/domain/search/options lines are returned as `dns` |
//! | `exclude` | array of IPs / CIDRs | `[]` | addresses never handed out (Scrambler's addition) |
//!
//! Ranges must not overlap, within or across range sets, and a set holds one family.
//! Requested addresses come from `CNI_ARGS` `IP=`, `args.cni.ips`, and `runtimeConfig.ips`;
//! `runtimeConfig.ipRanges` (the `ipRanges` capability) is prepended to `ranges`.
//!
//! ## Example
//!
//! ```
//! use scrambler_core::{AllocRequest, AttachmentId, Ipam};
//! use scrambler_ipam::{IpamConf, LocalIpam};
//!
//! # let tmp = tempfile::tempdir().unwrap();
//! # let data_dir = tmp.path().display().to_string();
//! let conf = IpamConf::parse(&serde_json::json!({
//!     "type": "scrambler-ipam",
//!     "ranges": [
//!         [{"subnet": "10.1.0.0/24"}],
//!         [{"subnet": "fd00:1::/64", "rangeStart": "fd00:1::10", "rangeEnd": "fd00:1::ff"}]
//!     ],
//!     "routes": [{"dst": "0.0.0.0/0"}],
//!     "exclude": ["10.1.0.2", "10.1.0.240/28"],
//!     "dataDir": data_dir,
//! }))?;
//! let ipam = LocalIpam::new("pods", conf)?;
//! let id = AttachmentId::new("c0ffee", "eth0");
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let result = ipam.allocate(&AllocRequest { id: id.clone(), requested: vec![] }).await?;
//! assert_eq!(result.ips[0].address.to_string(), "10.1.0.3/24"); // .1 gateway, .2 excluded
//! assert_eq!(result.ips[0].gateway.unwrap().to_string(), "10.1.0.1");
//! assert_eq!(result.ips[1].address.to_string(), "fd00:1::10/64");
//! // idempotent
//! assert_eq!(ipam.allocate(&AllocRequest { id: id.clone(), requested: vec![] }).await?, result);
//! ipam.release(&id).await?;
//! assert!(ipam.list().await?.is_empty());
//! # Ok::<(), scrambler_core::Error>(()) })?;
//! # Ok::<(), scrambler_core::Error>(())
//! ```
//!
//! As a plugin: install the `scrambler-ipam` binary in the CNI bin dir and set
//! `"ipam": {"type": "scrambler-ipam", …}`. It speaks every CNI version host-local does,
//! 0.1.0 through 1.1.0, with each version's result layout (0.1.0/0.2.0: `ip4`/`ip6`;
//! 0.3.x/0.4.0: `ips` with `version`; 1.x: without) and its commands: ADD, DEL and
//! VERSION always, CHECK from 0.4.0, GC (releasing every lease not in
//! `cni.dev/valid-attachments`) and STATUS from 1.1.0. The conf on stdin may be at most
//! 1 MiB. Run by hand, `--help` / `--version` say what it is. The CNI plumbing it uses is
//! in [`cni_io`].
//!
//! A runtime execs the plugin twice per pod (ADD, DEL), so its start-up is most of its
//! cost: it starts no async runtime and no threads, and logs with a minimal stderr
//! subscriber ([`log`]). Install it statically linked and position-dependent, as the
//! reference plugins' releases (static Go executables) are shipped; loading `libc` and `libgcc_s` and
//! relocating the binary at each exec is what a default build adds:
//!
//! ```sh
//! RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" cargo build --release \
//!     --target x86_64-unknown-linux-gnu -p scrambler-ipam   # → target/x86_64-unknown-linux-gnu/release/
//! ```
//!
//! (`--target` keeps the flags off build scripts and proc macros.)
#![warn(missing_docs)]

pub mod addr;
pub mod cni_io;
pub mod conf;
pub mod dns;
mod local;
pub mod log;
pub mod plugin;
pub mod range;
pub mod store;

pub use conf::{IpamConf, Range, RangeSet};
pub use local::LocalIpam;
pub use store::LeaseFile;
